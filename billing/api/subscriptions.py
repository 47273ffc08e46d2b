"""/v1/subscriptions"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint

from billing.api.endpoint import ViewResult, customer_scope, endpoint
from billing.api.errors import RequestInvalid
from billing.discounts.discounts import Redemption
from billing.subscriptions import subscriptions as service
from billing.views import schemas
from billing.views.serializers import subscription_out

bp = Blueprint("subscriptions", __name__, url_prefix="/v1/subscriptions")


def _discount_of(body: schemas.SubscriptionCreate) -> Redemption | None:
    if body.coupon is None and body.promotion_code is None:
        return None
    if body.coupon is not None and body.promotion_code is not None:
        raise RequestInvalid(
            400, "parameter_invalid", "give a coupon or a promotion_code, not both", param="coupon"
        )
    return Redemption(coupon_id=body.coupon, promotion_code_id=body.promotion_code)


@endpoint(
    bp,
    "",
    "POST",
    summary="Start a subscription: its first period is invoiced and collected at once, or "
    "at the end of its free trial",
    body=schemas.SubscriptionCreate,
    response=schemas.SubscriptionOut,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def create_subscription(body: schemas.SubscriptionCreate) -> ViewResult:
    subscription = service.create_subscription(
        service.SubscriptionFields(
            customer_id=body.customer,
            price_id=body.price,
            quantity=body.quantity,
            collection_method=body.collection_method,
            days_until_due=body.days_until_due,
            start_date=body.start_date,
            trial_period_days=body.trial_period_days,
            trial_end=(
                datetime.fromtimestamp(body.trial_end, UTC) if body.trial_end is not None else None
            ),
            discount=_discount_of(body),
        )
    )
    return subscription_out(subscription), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List subscriptions, newest first",
    query=schemas.SubscriptionListQuery,
    response=schemas.SubscriptionList,
    errors=(400,),
)
def list_subscriptions(query: schemas.SubscriptionListQuery) -> ViewResult:
    page = service.list_subscriptions(
        customer_scope=customer_scope(),
        customer_id=query.customer,
        status=query.status,
        limit=query.limit,
        starting_after=query.starting_after,
    )
    return schemas.SubscriptionList(
        data=[subscription_out(s) for s in page.items], has_more=page.has_more
    ), 200


@endpoint(
    bp,
    "/<subscription_id>",
    "GET",
    summary="Retrieve a subscription",
    response=schemas.SubscriptionOut,
    errors=(404,),
)
def get_subscription(subscription_id: str) -> ViewResult:
    subscription = service.get_subscription(subscription_id, customer_scope=customer_scope())
    return subscription_out(subscription), 200


@endpoint(
    bp,
    "/<subscription_id>",
    "PATCH",
    summary="Change the quantity or price (same currency and interval), prorated to the day",
    body=schemas.SubscriptionUpdate,
    response=schemas.SubscriptionOut,
    admin_only=True,
    errors=(400, 403, 404, 409, 422),
)
def update_subscription(subscription_id: str, body: schemas.SubscriptionUpdate) -> ViewResult:
    changes = body.model_dump(exclude_unset=True)
    subscription = service.update_subscription(
        subscription_id, quantity=changes.get("quantity"), price_id=changes.get("price")
    )
    return subscription_out(subscription), 200


@endpoint(
    bp,
    "/<subscription_id>/cancel",
    "POST",
    summary="Cancel at the end of the current period (default) or now",
    body=schemas.SubscriptionCancel,
    response=schemas.SubscriptionOut,
    admin_only=True,
    errors=(400, 403, 404, 409),
)
def cancel_subscription(subscription_id: str, body: schemas.SubscriptionCancel) -> ViewResult:
    subscription = service.cancel_subscription(subscription_id, at_period_end=body.at_period_end)
    return subscription_out(subscription), 200
