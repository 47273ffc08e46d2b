"""Use cases for coupons, promotion codes and discounts, and what an invoice reads of them.

Redemption limits are kept by the database: a discount made from a coupon (and its
promotion code) adds one to their `times_redeemed` in the same transaction, by an UPDATE
that locks the row, and the tables' CHECK constraints refuse a count past
`max_redemptions`, whatever the races; the checks here only turn the common case into a
clear error before anything is written.

Invoicing calls `applicable_discounts` (which discounts an invoice gets, their rows
locked) and `record_invoice_discounts` (the invoice's discount lines, and `once`
discounts used up), both in the invoice's own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.customers.customers import get_customer
from billing.discounts import rules
from billing.discounts.rules import CouponDuration
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.invoicing.rules import DiscountTerms
from billing.models import Coupon, Customer, Discount, InvoiceDiscount, PromotionCode, Subscription
from billing.platform import clock
from billing.platform.errors import Conflict, InvalidRequest, NotFound
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.subscriptions.rules import SubscriptionStatus

log = get_logger(__name__)


class CouponExpired(InvalidRequest):
    code = "coupon_expired"


class CouponMaxRedemptions(InvalidRequest):
    code = "coupon_max_redemptions"


class CouponCurrencyMismatch(InvalidRequest):
    code = "coupon_currency_mismatch"


class PromotionCodeExpired(InvalidRequest):
    code = "promotion_code_expired"


class PromotionCodeInactive(InvalidRequest):
    code = "promotion_code_inactive"


class PromotionCodeMaxRedemptions(InvalidRequest):
    code = "promotion_code_max_redemptions"


class PromotionCodeCustomerMismatch(InvalidRequest):
    code = "promotion_code_customer_mismatch"


class PromotionCodeExists(Conflict):
    code = "promotion_code_exists"


class CouponInvalid(InvalidRequest):
    code = "coupon_invalid"


class SubscriptionNotActive(Conflict):
    code = "subscription_not_active"


# --- coupons ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CouponFields:
    name: str
    duration: CouponDuration
    percent_off: Decimal | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration_in_months: int | None = None
    max_redemptions: int | None = None
    redeem_by: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def create_coupon(fields: CouponFields) -> Coupon:
    terms = rules.CouponTerms(
        name=fields.name,
        duration=fields.duration,
        percent_off=fields.percent_off,
        amount_off=fields.amount_off,
        currency=fields.currency,
        duration_in_months=fields.duration_in_months,
        max_redemptions=fields.max_redemptions,
    )
    try:
        rules.check_coupon(terms)
    except rules.CouponInvalid as exc:
        raise CouponInvalid(str(exc), param=exc.param) from exc
    if fields.redeem_by is not None and fields.redeem_by <= clock.now():
        raise CouponInvalid("redeem_by must lie in the future", param="redeem_by")
    with transaction() as session:
        coupon = Coupon(
            name=fields.name,
            percent_off=fields.percent_off,
            amount_off=fields.amount_off,
            currency=fields.currency,
            duration=fields.duration.value,
            duration_in_months=fields.duration_in_months,
            max_redemptions=fields.max_redemptions,
            redeem_by=fields.redeem_by,
            metadata_=fields.metadata,
        )
        session.add(coupon)
        session.flush()
        events.record(session, EventType.COUPON_CREATED, coupon.id, None)
    log.info("coupon.created", coupon_id=coupon.id)
    return coupon


def get_coupon(coupon_id: str, *, param: str = "id") -> Coupon:
    """A coupon not deleted; a deleted one is as missing as one never made."""
    coupon = db.session.get(Coupon, coupon_id)
    if coupon is None or coupon.deleted_at is not None:
        raise NotFound(f"No such coupon: '{coupon_id}'", param=param)
    return coupon


def list_coupons(*, limit: int, starting_after: str | None) -> Page[Coupon]:
    query = select(Coupon).where(Coupon.deleted_at.is_(None))
    return paginate(query, Coupon.id, limit, starting_after)


def delete_coupon(coupon_id: str) -> Coupon:
    """No further redemptions; the discounts it already gave run their course."""
    with transaction() as session:
        coupon = session.get(Coupon, coupon_id, with_for_update=True, populate_existing=True)
        if coupon is None or coupon.deleted_at is not None:
            raise NotFound(f"No such coupon: '{coupon_id}'", param="id")
        coupon.deleted_at = clock.now()
        events.record(session, EventType.COUPON_DELETED, coupon.id, None)
    log.info("coupon.deleted", coupon_id=coupon_id)
    return coupon


# --- promotion codes ----------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionCodeFields:
    code: str
    coupon_id: str
    customer_id: str | None = None
    max_redemptions: int | None = None
    expires_at: datetime | None = None
    active: bool = True


def _code_taken(session: Session, code: str) -> bool:
    found = session.scalar(
        select(PromotionCode.id).where(func.lower(PromotionCode.code) == code.lower())
    )
    return found is not None


def create_promotion_code(fields: PromotionCodeFields) -> PromotionCode:
    if fields.expires_at is not None and fields.expires_at <= clock.now():
        raise InvalidRequest("expires_at must lie in the future", param="expires_at")
    with transaction() as session:
        get_coupon(fields.coupon_id, param="coupon")
        if fields.customer_id is not None:
            get_customer(fields.customer_id).id  # noqa: B018 - a missing one is a 404
        if _code_taken(session, fields.code):
            raise PromotionCodeExists(
                f"a promotion code '{fields.code}' exists already (codes ignore case)",
                param="code",
            )
        promotion_code = PromotionCode(
            code=fields.code,
            coupon_id=fields.coupon_id,
            customer_id=fields.customer_id,
            max_redemptions=fields.max_redemptions,
            expires_at=fields.expires_at,
            active=fields.active,
        )
        session.add(promotion_code)
        try:
            session.flush()
        except IntegrityError as exc:
            # Another request took the code between our look and our insert.
            raise PromotionCodeExists(
                f"a promotion code '{fields.code}' exists already (codes ignore case)",
                param="code",
            ) from exc
        events.record(
            session, EventType.PROMOTION_CODE_CREATED, promotion_code.id, fields.customer_id
        )
    log.info("promotion_code.created", promotion_code_id=promotion_code.id)
    return promotion_code


def get_promotion_code(promotion_code_id: str, *, param: str = "id") -> PromotionCode:
    promotion_code = db.session.get(PromotionCode, promotion_code_id)
    if promotion_code is None:
        raise NotFound(f"No such promotion code: '{promotion_code_id}'", param=param)
    return promotion_code


def list_promotion_codes(
    *,
    code: str | None,
    coupon_id: str | None,
    active: bool | None,
    limit: int,
    starting_after: str | None,
) -> Page[PromotionCode]:
    query = select(PromotionCode)
    if code is not None:
        query = query.where(func.lower(PromotionCode.code) == code.lower())
    if coupon_id is not None:
        query = query.where(PromotionCode.coupon_id == coupon_id)
    if active is not None:
        query = query.where(PromotionCode.active.is_(active))
    return paginate(query, PromotionCode.id, limit, starting_after)


def update_promotion_code(promotion_code_id: str, *, active: bool | None) -> PromotionCode:
    with transaction() as session:
        promotion_code = session.get(
            PromotionCode, promotion_code_id, with_for_update=True, populate_existing=True
        )
        if promotion_code is None:
            raise NotFound(f"No such promotion code: '{promotion_code_id}'", param="id")
        if active is not None and active != promotion_code.active:
            promotion_code.active = active
            events.record(
                session,
                EventType.PROMOTION_CODE_UPDATED,
                promotion_code.id,
                promotion_code.customer_id,
            )
    log.info("promotion_code.updated", promotion_code_id=promotion_code_id, active=active)
    return promotion_code


# --- discounts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Redemption:
    """What a discount is made from: a coupon, or a promotion code (by its id)."""

    coupon_id: str | None = None
    promotion_code_id: str | None = None


def _redeemable_promotion_code(
    session: Session, promotion_code_id: str, customer: Customer, now: datetime, param: str
) -> PromotionCode:
    promotion_code = session.get(PromotionCode, promotion_code_id)
    if promotion_code is None:
        raise NotFound(f"No such promotion code: '{promotion_code_id}'", param=param)
    if not promotion_code.active:
        raise PromotionCodeInactive("this promotion code is no longer active", param=param)
    if promotion_code.expires_at is not None and promotion_code.expires_at <= now:
        raise PromotionCodeExpired("this promotion code has expired", param=param)
    if promotion_code.customer_id not in (None, customer.id):
        raise PromotionCodeCustomerMismatch(
            "this promotion code is for another customer", param=param
        )
    if (
        promotion_code.max_redemptions is not None
        and promotion_code.times_redeemed >= promotion_code.max_redemptions
    ):
        raise PromotionCodeMaxRedemptions(
            "this promotion code has been redeemed as often as it may be", param=param
        )
    return promotion_code


def _redeemable_coupon(
    session: Session, coupon_id: str, customer: Customer, now: datetime, param: str
) -> Coupon:
    coupon = session.get(Coupon, coupon_id)
    if coupon is None or coupon.deleted_at is not None:
        raise NotFound(f"No such coupon: '{coupon_id}'", param=param)
    if coupon.redeem_by is not None and coupon.redeem_by < now:
        raise CouponExpired("this coupon can no longer be redeemed", param=param)
    if coupon.max_redemptions is not None and coupon.times_redeemed >= coupon.max_redemptions:
        raise CouponMaxRedemptions(
            "this coupon has been redeemed as often as it may be", param=param
        )
    if coupon.currency is not None and coupon.currency != customer.currency:
        raise CouponCurrencyMismatch(
            f"this coupon takes {coupon.currency} off; the customer is billed in "
            f"{customer.currency}",
            param=param,
        )
    return coupon


def _count_redemption(
    session: Session,
    model: type[Coupon] | type[PromotionCode],
    row_id: str,
    error: InvalidRequest,
) -> None:
    """One more redemption, counted by the database: a concurrent redemption that got
    there first makes the CHECK refuse this one, and the whole change rolls back."""
    try:
        session.execute(
            update(model)
            .where(model.id == row_id)
            .values(times_redeemed=model.times_redeemed + 1)
            .execution_options(synchronize_session=False)
        )
    except IntegrityError as exc:
        raise error from exc


def redeem(
    session: Session,
    customer: Customer,
    redemption: Redemption,
    *,
    subscription_id: str | None = None,
    invoice_id: str | None = None,
    param: str = "coupon",
) -> Discount:
    """A discount for the customer (or one subscription of it, or one invoice) from a
    coupon or a promotion code, in the caller's transaction; the redemption counted."""
    now = clock.now()
    promotion_code = None
    if redemption.promotion_code_id is not None:
        promotion_code = _redeemable_promotion_code(
            session, redemption.promotion_code_id, customer, now, param
        )
        coupon_id = promotion_code.coupon_id
    elif redemption.coupon_id is not None:
        coupon_id = redemption.coupon_id
    else:
        raise InvalidRequest("give a coupon or a promotion_code", param=param)
    coupon = _redeemable_coupon(session, coupon_id, customer, now, param)
    _count_redemption(
        session,
        Coupon,
        coupon.id,
        CouponMaxRedemptions("this coupon has been redeemed as often as it may be", param=param),
    )
    if promotion_code is not None:
        _count_redemption(
            session,
            PromotionCode,
            promotion_code.id,
            PromotionCodeMaxRedemptions(
                "this promotion code has been redeemed as often as it may be", param=param
            ),
        )
    discount = Discount(
        coupon_id=coupon.id,
        promotion_code_id=promotion_code.id if promotion_code is not None else None,
        customer_id=customer.id,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
        start=now,
        end=rules.discount_end(now, CouponDuration(coupon.duration), coupon.duration_in_months),
    )
    session.add(discount)
    session.flush()
    events.record(session, EventType.DISCOUNT_CREATED, discount.id, customer.id)
    log.info(
        "discount.created",
        discount_id=discount.id,
        coupon_id=coupon.id,
        customer_id=customer.id,
        subscription_id=subscription_id,
        invoice_id=invoice_id,
    )
    return discount


def _locked_subscription(session: Session, subscription_id: str) -> Subscription:
    subscription = session.get(Subscription, subscription_id, with_for_update={"of": Subscription})
    if subscription is None:
        raise NotFound(f"No such subscription: '{subscription_id}'", param="id")
    return subscription


def add_customer_discount(customer_id: str, redemption: Redemption) -> Discount:
    with transaction() as session:
        customer = get_customer(customer_id)
        return redeem(session, customer, redemption, param=_param_of(redemption))


def add_subscription_discount(subscription_id: str, redemption: Redemption) -> Discount:
    with transaction() as session:
        subscription = _locked_subscription(session, subscription_id)
        if subscription.status != SubscriptionStatus.ACTIVE:
            raise SubscriptionNotActive(
                f"a {subscription.status} subscription takes no discount", param="id"
            )
        customer = get_customer(subscription.customer_id)
        return redeem(
            session,
            customer,
            redemption,
            subscription_id=subscription.id,
            param=_param_of(redemption),
        )


def _param_of(redemption: Redemption) -> str:
    return "promotion_code" if redemption.promotion_code_id is not None else "coupon"


def get_coupon_of(owner: Discount | PromotionCode) -> Coupon:
    """The coupon of a discount or a promotion code, deleted or not."""
    coupon = db.session.get(Coupon, owner.coupon_id)
    assert coupon is not None  # a foreign key
    return coupon


def list_discounts(
    *, customer_id: str | None = None, subscription_id: str | None = None
) -> list[Discount]:
    """The discounts still running of a customer (its own, not its subscriptions') or of a
    subscription, oldest first; a 404 for a missing customer or subscription."""
    if subscription_id is not None:
        if db.session.get(Subscription, subscription_id) is None:
            raise NotFound(f"No such subscription: '{subscription_id}'", param="subscription_id")
    else:
        get_customer(customer_id or "")
    query = select(Discount).where(Discount.ended_at.is_(None), Discount.invoice_id.is_(None))
    if subscription_id is not None:
        query = query.where(Discount.subscription_id == subscription_id)
    else:
        query = query.where(Discount.customer_id == customer_id, Discount.subscription_id.is_(None))
    return list(db.session.scalars(query.order_by(Discount.id)))


def remove_discount(
    discount_id: str, *, customer_id: str | None = None, subscription_id: str | None = None
) -> Discount:
    """It no longer applies to invoices to come; the invoices it is on keep it."""
    with transaction() as session:
        discount = session.get(Discount, discount_id, with_for_update=True, populate_existing=True)
        owner_matches = discount is not None and (
            discount.subscription_id == subscription_id
            if subscription_id is not None
            else (discount.customer_id == customer_id and discount.subscription_id is None)
        )
        if discount is None or not owner_matches or discount.invoice_id is not None:
            raise NotFound(f"No such discount: '{discount_id}'", param="discount_id")
        if discount.ended_at is None:
            discount.ended_at = clock.now()
            events.record(session, EventType.DISCOUNT_DELETED, discount.id, discount.customer_id)
    log.info("discount.deleted", discount_id=discount_id)
    return discount


# --- what invoices read -------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceDiscountsWanted:
    """Which invoice asks: its customer, its subscription (None for a one-off invoice), its
    own id when it has discounts of its own, the start of its period (a one-off invoice's is
    its creation) and its currency."""

    customer_id: str
    subscription_id: str | None
    invoice_id: str | None
    period_start: datetime
    currency: str


@dataclass(frozen=True)
class AppliedDiscount:
    discount_id: str
    coupon_id: str
    description: str
    terms: DiscountTerms
    once: bool


def _applied(discount: Any, coupon: Any) -> AppliedDiscount:
    return AppliedDiscount(
        discount_id=discount.id,
        coupon_id=coupon.id,
        description=rules.describe(
            coupon.name, coupon.percent_off, coupon.amount_off, coupon.currency
        ),
        terms=rules.terms_of(coupon.percent_off, coupon.amount_off),
        once=coupon.duration == CouponDuration.ONCE,
    )


def applicable_discounts(
    session: Session, wanted: Sequence[InvoiceDiscountsWanted]
) -> list[list[AppliedDiscount]]:
    """For each invoice wanted, the discounts it gets, in the order they apply: one
    statement however many, which locks the discounts' rows until the caller commits, so
    that a `once` discount is taken by one invoice only (a concurrent one waits, then no
    longer finds it running). An amount-off coupon in another currency than the invoice's
    (the customer's currency changed since) does not apply."""
    if not wanted:
        return []
    customer_ids = sorted({w.customer_id for w in wanted})
    subscription_ids = sorted({w.subscription_id for w in wanted if w.subscription_id})
    invoice_ids = sorted({w.invoice_id for w in wanted if w.invoice_id})
    rows = session.execute(
        select(Discount, Coupon)
        .join(Coupon, Coupon.id == Discount.coupon_id)
        .where(
            Discount.customer_id.in_(customer_ids),
            Discount.ended_at.is_(None),
            or_(
                and_(Discount.subscription_id.is_(None), Discount.invoice_id.is_(None)),
                Discount.subscription_id.in_(subscription_ids),
                Discount.invoice_id.in_(invoice_ids),
            ),
        )
        .order_by(Discount.id)
        .with_for_update(of=Discount)
        .execution_options(populate_existing=True)
    ).all()
    result = []
    for w in wanted:
        mine = {
            d.id: (d, c)
            for d, c in rows
            if d.customer_id == w.customer_id
            and d.invoice_id in (None, w.invoice_id)
            and d.subscription_id in (None, w.subscription_id)
            and (c.currency is None or c.currency == w.currency)
        }
        chosen = rules.select_discounts(
            [
                rules.Candidate(d.id, d.subscription_id, d.invoice_id, d.end, d.ended_at)
                for d, _ in mine.values()
            ],
            subscription_id=w.subscription_id,
            period_start=w.period_start,
        )
        result.append([_applied(*mine[i]) for i in chosen])
    return result


def discounts_on_invoice(session: Session, invoice_id: str) -> list[AppliedDiscount]:
    """The discounts a draft took when it was made, in the order they apply: its
    recomputation keeps them, whatever happened to them since."""
    rows = session.execute(
        select(Discount, Coupon)
        .join(InvoiceDiscount, InvoiceDiscount.discount_id == Discount.id)
        .join(Coupon, Coupon.id == Discount.coupon_id)
        .where(InvoiceDiscount.invoice_id == invoice_id)
        .order_by(Discount.id)
    ).all()
    return [_applied(d, c) for d, c in rows]


def record_invoice_discounts(
    session: Session,
    invoice_id: str,
    applied: Sequence[AppliedDiscount],
    amounts: Sequence[int],
    *,
    replace: bool = False,
) -> None:
    """The invoice's discount lines, one per discount with what it took; `replace`: those
    of a draft recomputed. A `once` discount put on an invoice for the first time is used
    up by it."""
    record_many_invoice_discounts(session, [(invoice_id, applied, amounts)], replace=replace)


def record_many_invoice_discounts(
    session: Session,
    invoices: Sequence[tuple[str, Sequence[AppliedDiscount], Sequence[int]]],
    *,
    replace: bool = False,
) -> None:
    """`record_invoice_discounts` for many invoices: a statement per table at most."""
    if replace:
        session.execute(
            delete(InvoiceDiscount).where(
                InvoiceDiscount.invoice_id.in_([invoice_id for invoice_id, _, _ in invoices])
            )
        )
    rows = [
        {
            "invoice_id": invoice_id,
            "discount_id": a.discount_id,
            "coupon_id": a.coupon_id,
            "description": a.description,
            "amount": amount,
        }
        for invoice_id, applied, amounts in invoices
        for a, amount in zip(applied, amounts, strict=True)
    ]
    if rows:
        session.execute(insert(InvoiceDiscount), rows)
    used = [a.discount_id for _, applied, _ in invoices for a in applied if a.once]
    if used and not replace:
        session.execute(
            update(Discount)
            .where(Discount.id.in_(used), Discount.ended_at.is_(None))
            .values(ended_at=clock.now())
            .execution_options(synchronize_session=False)
        )
