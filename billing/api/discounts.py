"""/v1/coupons, /v1/promotion_codes, and the discounts of customers and subscriptions."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint

from billing.api.endpoint import ViewResult, endpoint
from billing.discounts import discounts as service
from billing.discounts.rules import CouponDuration
from billing.models import Discount
from billing.views import schemas
from billing.views.serializers import coupon_out, discount_out, promotion_code_out

coupons_bp = Blueprint("coupons", __name__, url_prefix="/v1/coupons")
promotion_codes_bp = Blueprint("promotion_codes", __name__, url_prefix="/v1/promotion_codes")
discounts_bp = Blueprint("discounts", __name__, url_prefix="/v1")


def _at(timestamp: int | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


def redemption(body: schemas.DiscountCreate) -> service.Redemption:
    return service.Redemption(coupon_id=body.coupon, promotion_code_id=body.promotion_code)


def _discount_out(discount: Discount) -> schemas.DiscountOut:
    return discount_out(discount, service.get_coupon_of(discount))


# --- coupons ------------------------------------------------------------------------------


@endpoint(
    coupons_bp,
    "",
    "POST",
    summary="Create a coupon: a percentage or an amount off, once, for some months or forever",
    body=schemas.CouponCreate,
    response=schemas.CouponOut,
    admin_only=True,
    errors=(400, 403, 422),
)
def create_coupon(body: schemas.CouponCreate) -> ViewResult:
    coupon = service.create_coupon(
        service.CouponFields(
            name=body.name,
            duration=CouponDuration(body.duration),
            percent_off=body.percent_off,
            amount_off=body.amount_off,
            currency=body.currency,
            duration_in_months=body.duration_in_months,
            max_redemptions=body.max_redemptions,
            redeem_by=_at(body.redeem_by),
            metadata=body.metadata,
        )
    )
    return coupon_out(coupon), 200


@endpoint(
    coupons_bp,
    "",
    "GET",
    summary="List coupons not deleted, newest first",
    query=schemas.ListQuery,
    response=schemas.CouponList,
    admin_only=True,
    errors=(400, 403),
)
def list_coupons(query: schemas.ListQuery) -> ViewResult:
    page = service.list_coupons(limit=query.limit, starting_after=query.starting_after)
    return schemas.CouponList(data=[coupon_out(c) for c in page.items], has_more=page.has_more), 200


@endpoint(
    coupons_bp,
    "/<coupon_id>",
    "GET",
    summary="Retrieve a coupon",
    response=schemas.CouponOut,
    admin_only=True,
    errors=(403, 404),
)
def get_coupon(coupon_id: str) -> ViewResult:
    return coupon_out(service.get_coupon(coupon_id)), 200


@endpoint(
    coupons_bp,
    "/<coupon_id>",
    "DELETE",
    summary="Delete a coupon: no further redemptions; the discounts it gave run their course",
    response=schemas.CouponOut,
    admin_only=True,
    errors=(403, 404),
)
def delete_coupon(coupon_id: str) -> ViewResult:
    return coupon_out(service.delete_coupon(coupon_id)), 200


# --- promotion codes ----------------------------------------------------------------------


@endpoint(
    promotion_codes_bp,
    "",
    "POST",
    summary="Create a promotion code customers can type, for a coupon, with limits of its own",
    body=schemas.PromotionCodeCreate,
    response=schemas.PromotionCodeOut,
    admin_only=True,
    errors=(400, 403, 404, 409, 422),
)
def create_promotion_code(body: schemas.PromotionCodeCreate) -> ViewResult:
    promotion_code = service.create_promotion_code(
        service.PromotionCodeFields(
            code=body.code,
            coupon_id=body.coupon,
            customer_id=body.customer,
            max_redemptions=body.max_redemptions,
            expires_at=_at(body.expires_at),
            active=body.active,
        )
    )
    return promotion_code_out(promotion_code, service.get_coupon_of(promotion_code)), 200


@endpoint(
    promotion_codes_bp,
    "",
    "GET",
    summary="List promotion codes, newest first; `code` finds one by what customers type",
    query=schemas.PromotionCodeListQuery,
    response=schemas.PromotionCodeList,
    admin_only=True,
    errors=(400, 403),
)
def list_promotion_codes(query: schemas.PromotionCodeListQuery) -> ViewResult:
    page = service.list_promotion_codes(
        code=query.code,
        coupon_id=query.coupon,
        active=query.active,
        limit=query.limit,
        starting_after=query.starting_after,
    )
    return schemas.PromotionCodeList(
        data=[promotion_code_out(p, service.get_coupon_of(p)) for p in page.items],
        has_more=page.has_more,
    ), 200


@endpoint(
    promotion_codes_bp,
    "/<promotion_code_id>",
    "GET",
    summary="Retrieve a promotion code",
    response=schemas.PromotionCodeOut,
    admin_only=True,
    errors=(403, 404),
)
def get_promotion_code(promotion_code_id: str) -> ViewResult:
    promotion_code = service.get_promotion_code(promotion_code_id)
    return promotion_code_out(promotion_code, service.get_coupon_of(promotion_code)), 200


@endpoint(
    promotion_codes_bp,
    "/<promotion_code_id>",
    "POST",
    summary="Activate or deactivate a promotion code",
    body=schemas.PromotionCodeUpdate,
    response=schemas.PromotionCodeOut,
    admin_only=True,
    errors=(400, 403, 404),
)
def update_promotion_code(promotion_code_id: str, body: schemas.PromotionCodeUpdate) -> ViewResult:
    promotion_code = service.update_promotion_code(promotion_code_id, active=body.active)
    return promotion_code_out(promotion_code, service.get_coupon_of(promotion_code)), 200


# --- the discounts of customers and subscriptions ----------------------------------------


@endpoint(
    discounts_bp,
    "/customers/<customer_id>/discounts",
    "POST",
    summary="Give a customer a discount: its invoices get it (a subscription's, when that "
    "subscription has none of its own)",
    body=schemas.DiscountCreate,
    response=schemas.DiscountOut,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def add_customer_discount(customer_id: str, body: schemas.DiscountCreate) -> ViewResult:
    return _discount_out(service.add_customer_discount(customer_id, redemption(body))), 200


@endpoint(
    discounts_bp,
    "/customers/<customer_id>/discounts",
    "GET",
    summary="List a customer's running discounts, oldest first",
    response=schemas.DiscountList,
    admin_only=True,
    errors=(403, 404),
)
def list_customer_discounts(customer_id: str) -> ViewResult:
    found = service.list_discounts(customer_id=customer_id)
    return schemas.DiscountList(data=[_discount_out(d) for d in found]), 200


@endpoint(
    discounts_bp,
    "/customers/<customer_id>/discounts/<discount_id>",
    "DELETE",
    summary="End a customer's discount: invoices to come no longer get it",
    response=schemas.DiscountOut,
    admin_only=True,
    errors=(403, 404),
)
def remove_customer_discount(customer_id: str, discount_id: str) -> ViewResult:
    discount = service.remove_discount(discount_id, customer_id=customer_id)
    return _discount_out(discount), 200


@endpoint(
    discounts_bp,
    "/subscriptions/<subscription_id>/discounts",
    "POST",
    summary="Give a subscription a discount: its invoices get it instead of the customer's",
    body=schemas.DiscountCreate,
    response=schemas.DiscountOut,
    admin_only=True,
    errors=(400, 403, 404, 409, 422),
)
def add_subscription_discount(subscription_id: str, body: schemas.DiscountCreate) -> ViewResult:
    discount = service.add_subscription_discount(subscription_id, redemption(body))
    return _discount_out(discount), 200


@endpoint(
    discounts_bp,
    "/subscriptions/<subscription_id>/discounts",
    "GET",
    summary="List a subscription's running discounts, oldest first",
    response=schemas.DiscountList,
    admin_only=True,
    errors=(403, 404),
)
def list_subscription_discounts(subscription_id: str) -> ViewResult:
    found = service.list_discounts(subscription_id=subscription_id)
    return schemas.DiscountList(data=[_discount_out(d) for d in found]), 200


@endpoint(
    discounts_bp,
    "/subscriptions/<subscription_id>/discounts/<discount_id>",
    "DELETE",
    summary="End a subscription's discount: invoices to come no longer get it",
    response=schemas.DiscountOut,
    admin_only=True,
    errors=(403, 404),
)
def remove_subscription_discount(subscription_id: str, discount_id: str) -> ViewResult:
    discount = service.remove_discount(discount_id, subscription_id=subscription_id)
    return _discount_out(discount), 200
