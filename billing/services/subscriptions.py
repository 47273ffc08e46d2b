"""Use cases for subscriptions: start one (its first period invoiced at once), change its
quantity or price (prorated onto the next invoice), cancel it, and the billing run that
invoices every period that has begun.

Each invoiced period is a `subscription_periods` row keyed by (subscription, period start)
and written in the same transaction as its invoice, so that no run, however doubled or
concurrent, can invoice a period twice: the subscription's row lock makes a second run wait
and then find nothing due, and the key is the last wall behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from billing import clock
from billing.domain import subscriptions as rules
from billing.domain.invoices import CollectionMethod
from billing.domain.subscriptions import Interval, SubscriptionStatus
from billing.extensions import db
from billing.logging import get_logger
from billing.models import (
    Invoice,
    Subscription,
    SubscriptionAdjustment,
    SubscriptionPeriod,
)
from billing.services import invoices, locks
from billing.services.customers import get_customer
from billing.services.errors import Conflict, InvalidRequest, NotFound
from billing.services.pagination import Page, paginate
from billing.services.prices import get_price
from billing.services.unit_of_work import transaction

log = get_logger(__name__)

# How far back a start date may lie: the missed periods are invoiced by the next run, and
# a year of them is as much catching up as anyone should ask of one request.
MAX_BACKDATE = timedelta(days=366)
# Subscriptions read per batch by the billing run (keyset pagination by id): bounded memory
# whatever the number due.
RUN_BATCH = 500
# Periods one subscription may catch up in one run (36 months: three years of downtime);
# any further ones are left to the next run.
MAX_PERIODS_PER_RUN = 36
BILLING_RUN_LOCK = "billing-run"


class SubscriptionNotActive(Conflict):
    code = "subscription_not_active"


@dataclass(frozen=True)
class SubscriptionFields:
    customer_id: str
    price_id: str
    quantity: int = 1
    collection_method: CollectionMethod = CollectionMethod.CHARGE_AUTOMATICALLY
    days_until_due: int | None = None
    start_date: date | None = None


def get_subscription(subscription_id: str, *, customer_scope: str | None = None) -> Subscription:
    subscription = db.session.get(Subscription, subscription_id)
    if subscription is None or customer_scope not in (None, subscription.customer_id):
        raise NotFound(f"No such subscription: '{subscription_id}'", param="id")
    return subscription


def list_subscriptions(
    *,
    customer_scope: str | None,
    customer_id: str | None,
    status: SubscriptionStatus | None,
    limit: int,
    starting_after: str | None,
) -> Page[Subscription]:
    query = select(Subscription)
    if customer_scope is not None:
        query = query.where(Subscription.customer_id == customer_scope)
    if customer_id is not None:
        query = query.where(Subscription.customer_id == customer_id)
    if status is not None:
        query = query.where(Subscription.status == status.value)
    return paginate(query, Subscription.id, limit, starting_after)


def _locked(session: Session, subscription_id: str, *, for_billing: bool = False) -> Subscription:
    options = [joinedload(Subscription.price)]
    if for_billing:
        # What invoicing a period reads, in the statement that takes the lock: the customer
        # (create_invoice then finds it in the session) and the pending adjustments.
        options += [
            joinedload(Subscription.customer),
            joinedload(Subscription.pending_adjustments),
        ]
    subscription = session.get(
        Subscription,
        subscription_id,
        with_for_update={"of": Subscription},
        populate_existing=True,
        options=options,
    )
    if subscription is None:
        raise NotFound(f"No such subscription: '{subscription_id}'", param="id")
    return subscription


def _anchor(start_date: date | None) -> datetime:
    now = clock.now()
    if start_date is None:
        return now
    if start_date > now.date():
        raise InvalidRequest("start_date cannot lie in the future", param="start_date")
    if start_date < (now - MAX_BACKDATE).date():
        raise InvalidRequest(
            f"start_date lies at most {MAX_BACKDATE.days} days back", param="start_date"
        )
    return datetime.combine(start_date, time(), UTC)


def create_subscription(fields: SubscriptionFields) -> Subscription:
    """Start a subscription and invoice its first period at once (billing in advance)."""
    with transaction() as session:
        customer = get_customer(fields.customer_id)
        price = get_price(fields.price_id, param="price")
        if price.currency != customer.currency:
            raise InvalidRequest(
                f"the customer is billed in {customer.currency}, the price is in {price.currency}",
                param="price",
            )
        if (
            fields.collection_method is CollectionMethod.CHARGE_AUTOMATICALLY
            and fields.days_until_due is not None
        ):
            raise InvalidRequest(
                "days_until_due applies only to send_invoice subscriptions", param="days_until_due"
            )
        try:
            rules.period_amount(price.unit_amount, fields.quantity)
        except rules.AmountTooLarge as exc:
            raise InvalidRequest(str(exc), param="quantity") from exc
        anchor = _anchor(fields.start_date)
        first = rules.period(anchor, Interval(price.interval), 0)
        subscription = Subscription(
            customer_id=customer.id,
            price=price,
            quantity=fields.quantity,
            status=SubscriptionStatus.ACTIVE.value,
            collection_method=fields.collection_method.value,
            days_until_due=fields.days_until_due,
            billing_cycle_anchor=anchor,
            current_period_index=first.index,
            current_period_start=first.start,
            current_period_end=first.end,
            cancel_at_period_end=False,
        )
        session.add(subscription)
        session.flush()
        _invoice_period(session, subscription, first, adjustments=[])
    log.info(
        "subscription.created",
        subscription_id=subscription.id,
        customer_id=subscription.customer_id,
        invoice_id=subscription.latest_invoice_id,
    )
    return subscription


def _invoice_period(
    session: Session,
    subscription: Subscription,
    period: rules.Period,
    adjustments: list[SubscriptionAdjustment],
) -> Invoice:
    """Invoice `period` in the caller's transaction: the period's line and every pending
    adjustment, created and finalized through the invoice use cases (which record the
    charge or the due date, the PDF and the emails), and the period's row that makes it
    the only invoice of this period."""
    price = subscription.price
    span = rules.describe_period(period.start, period.end)
    lines = [
        invoices.LineFields(
            description=f"{price.product} ({span})",
            quantity=subscription.quantity,
            unit_amount=price.unit_amount,
        )
    ]
    lines += [
        invoices.LineFields(description=a.description, quantity=1, unit_amount=a.amount)
        for a in adjustments
    ]
    total = sum(line.quantity * line.unit_amount for line in lines)
    carried: SubscriptionAdjustment | None = None
    if total < 0:
        # More credit than this period costs (a downgrade early in a period): the invoice
        # comes to zero and the rest of the credit waits for the next one.
        lines.append(
            invoices.LineFields(
                description="Credit carried forward to the next invoice",
                quantity=1,
                unit_amount=-total,
            )
        )
        carried = SubscriptionAdjustment(
            subscription_id=subscription.id,
            description="Credit carried forward from the previous invoice",
            amount=total,
            currency=price.currency,
        )
    send_invoice = subscription.collection_method == CollectionMethod.SEND_INVOICE
    invoice = invoices.create_invoice(
        invoices.InvoiceFields(
            customer_id=subscription.customer_id,
            collection_method=CollectionMethod(subscription.collection_method),
            currency=price.currency,
            # Due counted from the day the invoice is issued, on the service's clock.
            due_date=(
                clock.today() + timedelta(days=subscription.days_until_due)
                if send_invoice and subscription.days_until_due is not None
                else None
            ),
            description=f"Subscription to {price.product}, {span}",
            metadata={
                "subscription": subscription.id,
                "period_start": period.start.isoformat(),
                "period_end": period.end.isoformat(),
            },
            lines=lines,
        )
    )
    session.add(
        SubscriptionPeriod(
            subscription_id=subscription.id,
            period_start=period.start,
            period_end=period.end,
            period_index=period.index,
            invoice_id=invoice.id,
        )
    )
    for adjustment in adjustments:
        adjustment.invoice_id = invoice.id
    if carried is not None:
        session.add(carried)
    invoices.finalize_invoice(invoice.id)
    subscription.latest_invoice_id = invoice.id
    return invoice


def update_subscription(
    subscription_id: str, *, quantity: int | None = None, price_id: str | None = None
) -> Subscription:
    """Change the quantity or the price (same currency and interval) from now on. The rest
    of the current period is prorated to the day onto the next invoice: a credit for the
    old plan's unused days, a charge for the new plan's remaining days."""
    with transaction() as session:
        subscription = _locked(session, subscription_id)
        if subscription.status != SubscriptionStatus.ACTIVE:
            raise SubscriptionNotActive(f"a {subscription.status} subscription cannot change")
        old_price = subscription.price
        new_price = old_price if price_id is None else get_price(price_id, param="price")
        if (new_price.currency, new_price.interval) != (old_price.currency, old_price.interval):
            raise InvalidRequest(
                "the new price must have the same currency and interval as the current one",
                param="price",
            )
        new_quantity = subscription.quantity if quantity is None else quantity
        try:
            rules.period_amount(new_price.unit_amount, new_quantity)
        except rules.AmountTooLarge as exc:
            raise InvalidRequest(str(exc), param="quantity") from exc
        if (new_price.id, new_quantity) == (old_price.id, subscription.quantity):
            return subscription
        now = clock.now()
        proration = rules.prorate_change(
            old_unit_amount=old_price.unit_amount,
            old_quantity=subscription.quantity,
            new_unit_amount=new_price.unit_amount,
            new_quantity=new_quantity,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
            at=now,
        )
        days = f"{proration.remaining_days}/{proration.days_in_period} days"
        since = rules.describe_day(now)
        for amount, description in (
            (
                proration.credit,
                f"Unused time on {subscription.quantity} x {old_price.product} "
                f"from {since} ({days})",
            ),
            (
                proration.charge,
                f"Remaining time on {new_quantity} x {new_price.product} from {since} ({days})",
            ),
        ):
            if amount:
                session.add(
                    SubscriptionAdjustment(
                        subscription_id=subscription.id,
                        description=description,
                        amount=amount,
                        currency=new_price.currency,
                    )
                )
        subscription.price = new_price
        subscription.quantity = new_quantity
    log.info(
        "subscription.updated",
        subscription_id=subscription_id,
        price_id=new_price.id,
        quantity=new_quantity,
        credit=proration.credit,
        charge=proration.charge,
    )
    return subscription


def cancel_subscription(subscription_id: str, *, at_period_end: bool = True) -> Subscription:
    """At period end (the default): no further invoice, canceled by the run when the period
    ends. Now: canceled at once; the period already paid is not refunded (prorated refunds
    are an operator's decision, through POST /v1/invoices/{id}/refund) and pending
    adjustments are dropped with it."""
    with transaction() as session:
        subscription = _locked(session, subscription_id)
        if subscription.status != SubscriptionStatus.ACTIVE:
            raise SubscriptionNotActive(f"a {subscription.status} subscription cannot be canceled")
        now = clock.now()
        subscription.canceled_at = now
        if at_period_end:
            subscription.cancel_at_period_end = True
        else:
            subscription.status = SubscriptionStatus.CANCELED.value
            subscription.ended_at = now
    log.info("subscription.canceled", subscription_id=subscription_id, at_period_end=at_period_end)
    return subscription


# --- the billing run --------------------------------------------------------------------


@dataclass(frozen=True)
class BillingRunResult:
    ran: bool  # False: another run held the lock
    invoices_created: int = 0
    subscriptions_ended: int = 0
    failures: int = 0


def bill_next_period(subscription_id: str, now: datetime) -> str | None:
    """In one transaction: if the subscription's period ended by `now`, either end it (it
    was canceled at period end) or invoice the next period and move on to it. Answers
    "invoiced", "ended", or None when there was nothing to do."""
    with transaction() as session:
        subscription = _locked(session, subscription_id, for_billing=True)
        if (
            subscription.status != SubscriptionStatus.ACTIVE
            or subscription.current_period_end > now
        ):
            return None
        if subscription.cancel_at_period_end:
            subscription.status = SubscriptionStatus.CANCELED.value
            subscription.ended_at = subscription.current_period_end
            log.info("subscription.ended", subscription_id=subscription_id)
            return "ended"
        following = rules.period(
            subscription.billing_cycle_anchor,
            Interval(subscription.price.interval),
            subscription.current_period_index + 1,
        )
        invoice = _invoice_period(
            session,
            subscription,
            following,
            adjustments=list(subscription.pending_adjustments),
        )
        invoice_id = invoice.id
        subscription.current_period_index = following.index
        subscription.current_period_start = following.start
        subscription.current_period_end = following.end
    log.info(
        "subscription.period_invoiced",
        subscription_id=subscription_id,
        invoice_id=invoice_id,
        period_start=following.start.isoformat(),
    )
    return "invoiced"


def bill_due_subscriptions(*, batch_size: int = RUN_BATCH) -> BillingRunResult:
    """Every active subscription whose period ended by now (the service's clock, read once)
    gets its next period invoiced, missed periods included (up to MAX_PERIODS_PER_RUN each),
    one period per transaction. A failure is logged and left to the next run; the others go
    on. Reads ids in batches by keyset (id > last), so memory stays bounded."""
    now = clock.now()
    created = ended = failures = 0
    last = ""
    while True:
        batch = list(
            db.session.scalars(
                select(Subscription.id)
                .where(
                    Subscription.status == SubscriptionStatus.ACTIVE.value,
                    Subscription.current_period_end <= now,
                    Subscription.id > last,
                )
                .order_by(Subscription.id)
                .limit(batch_size)
            )
        )
        db.session.commit()
        if not batch:
            break
        for subscription_id in batch:
            for _ in range(MAX_PERIODS_PER_RUN):
                try:
                    outcome = bill_next_period(subscription_id, now)
                except Exception:  # one subscription must not stop the run
                    log.exception(
                        "billing_run.subscription_failed", subscription_id=subscription_id
                    )
                    failures += 1
                    break
                if outcome is None:
                    break
                if outcome == "ended":
                    ended += 1
                    break
                created += 1
        last = batch[-1]
    log.info("billing_run.finished", invoices_created=created, ended=ended, failures=failures)
    return BillingRunResult(
        ran=True, invoices_created=created, subscriptions_ended=ended, failures=failures
    )


def run_billing() -> BillingRunResult:
    """The scheduled billing run: one at a time across every process (advisory lock)."""
    with locks.exclusive(BILLING_RUN_LOCK) as taken:
        if not taken:
            return BillingRunResult(ran=False)
        return bill_due_subscriptions()
