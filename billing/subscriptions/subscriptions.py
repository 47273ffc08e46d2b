"""Use cases for subscriptions: start one (its first period invoiced at once, or after a
trial), change its quantity or price (prorated onto the next invoice), cancel it, the
billing run that invoices every period that has begun, and the notice of a trial's end.

Each invoiced period is a `subscription_periods` row keyed by (subscription, period start)
and written in the same transaction as its invoice, so that no run, however doubled or
concurrent, can invoice a period twice: the subscription's row lock makes a second run wait
and then find nothing due, and the key is the last wall behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, joinedload

from billing.customers.customers import get_customer
from billing.discounts import discounts
from billing.domain.money import charge_step
from billing.einvoices import service as einvoices
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.invoicing import invoices
from billing.invoicing import rules as invoice_rules
from billing.invoicing.rules import CollectionMethod, InvoiceStatus
from billing.models import (
    Customer,
    Invoice,
    InvoiceLine,
    Price,
    Subscription,
    SubscriptionAdjustment,
    SubscriptionPeriod,
)
from billing.notifications import emails
from billing.platform import clock, context, locks
from billing.platform.errors import Conflict, InvalidRequest, NotFound, ServiceError
from billing.platform.ids import new_id
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.subscriptions import rules
from billing.subscriptions.prices import get_price
from billing.subscriptions.rules import Interval, SubscriptionStatus
from billing.taxes.rules import TaxCategory, TaxDecision, TaxReason
from billing.taxes.tax_rates import TaxBook

log = get_logger(__name__)

# How far back a start date may lie: the missed periods are invoiced by the next run, and
# a year of them is as much catching up as anyone should ask of one request.
MAX_BACKDATE = timedelta(days=366)
# Subscriptions read per batch by the billing run (keyset pagination by id): bounded memory
# whatever the number due.
RUN_BATCH = 500
# Subscriptions invoiced per transaction by the run: a few statements per chunk instead of a
# dozen per invoice; small enough that the invoice-number counter, locked until the chunk
# commits, never holds a concurrent finalization back for long.
RUN_CHUNK = 100
# Periods one subscription may catch up in one run (36 months: three years of downtime);
# any further ones are left to the next run.
MAX_PERIODS_PER_RUN = 36
BILLING_RUN_LOCK = "billing-run"
TRIAL_WILL_END_EMAIL = "trial_will_end"


class SubscriptionNotActive(Conflict):
    code = "subscription_not_active"


class ParametersExclusive(ServiceError):
    code = "parameters_exclusive"


class TrialEndInPast(ServiceError):
    code = "trial_end_in_past"


class TrialTooLong(ServiceError):
    code = "trial_too_long"


@dataclass(frozen=True)
class SubscriptionFields:
    customer_id: str
    price_id: str
    quantity: int = 1
    collection_method: CollectionMethod = CollectionMethod.CHARGE_AUTOMATICALLY
    days_until_due: int | None = None
    start_date: date | None = None
    trial_period_days: int | None = None
    trial_end: datetime | None = None
    # A discount of its own from its start (a coupon or a promotion code).
    discount: discounts.Redemption | None = None


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


def _trial_end(fields: SubscriptionFields) -> datetime | None:
    """When the trial asked for ends (None: no trial), checked against the service's clock."""
    if fields.trial_period_days is not None and fields.trial_end is not None:
        raise ParametersExclusive(
            "give trial_period_days or trial_end, not both", param="trial_end"
        )
    if fields.trial_period_days is None and fields.trial_end is None:
        return None
    if fields.start_date is not None:
        # A trial starts now; a backdated anchor would invoice periods inside it.
        raise ParametersExclusive("a trial cannot start on a past start_date", param="start_date")
    now = clock.now()
    if fields.trial_period_days is not None:
        return now + timedelta(days=fields.trial_period_days)
    assert fields.trial_end is not None
    if fields.trial_end <= now:
        raise TrialEndInPast("trial_end must lie in the future", param="trial_end")
    if fields.trial_end > now + timedelta(days=rules.MAX_TRIAL_DAYS):
        raise TrialTooLong(f"a trial lasts at most {rules.MAX_TRIAL_DAYS} days", param="trial_end")
    return fields.trial_end


def _redeem_own_discount(
    session: Session, customer: Customer, fields: SubscriptionFields, subscription: Subscription
) -> None:
    """A discount asked for at the start is the subscription's from then, trial or not."""
    if fields.discount is not None:
        discounts.redeem(
            session,
            customer,
            fields.discount,
            subscription_id=subscription.id,
            param="promotion_code" if fields.discount.promotion_code_id else "coupon",
        )


def create_subscription(fields: SubscriptionFields) -> Subscription:
    """Start a subscription and invoice its first period at once (billing in advance), or,
    with a trial, invoice nothing until the billing run finds the trial ended."""
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
        trial_end = _trial_end(fields)
        if trial_end is not None:
            subscription = _start_trial(session, fields, price, trial_end)
            _redeem_own_discount(session, customer, fields, subscription)
            log.info(
                "subscription.created",
                subscription_id=subscription.id,
                customer_id=subscription.customer_id,
                trial_end=trial_end.isoformat(),
            )
            return subscription
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
        events.record(
            session, EventType.SUBSCRIPTION_CREATED, subscription.id, subscription.customer_id
        )
        _redeem_own_discount(session, customer, fields, subscription)
        _invoice_periods(session, [(subscription, first)], clock.now())
    log.info(
        "subscription.created",
        subscription_id=subscription.id,
        customer_id=subscription.customer_id,
        invoice_id=subscription.latest_invoice_id,
    )
    return subscription


def _start_trial(
    session: Session, fields: SubscriptionFields, price: Price, trial_end: datetime
) -> Subscription:
    """A trialing subscription: its current period is the trial (index -1), so the billing
    run invoices period 0, anchored on the trial's end, once the trial is over. No invoice
    now, not even one for zero as Stripe makes: there is nothing to collect, a zero invoice
    would use up a number of the gapless sequence, and finance would see empty invoices."""
    now = clock.now()
    subscription = Subscription(
        customer_id=fields.customer_id,
        price=price,
        quantity=fields.quantity,
        status=SubscriptionStatus.TRIALING.value,
        collection_method=fields.collection_method.value,
        days_until_due=fields.days_until_due,
        billing_cycle_anchor=trial_end,
        current_period_index=rules.TRIAL_PERIOD_INDEX,
        current_period_start=now,
        current_period_end=trial_end,
        cancel_at_period_end=False,
        trial_start=now,
        trial_end=trial_end,
    )
    session.add(subscription)
    session.flush()
    events.record(
        session, EventType.SUBSCRIPTION_CREATED, subscription.id, subscription.customer_id
    )
    return subscription


# A credit carried between invoices moves what is owed, tax and all; it is not a supply of
# its own, so it takes no tax (and says so: a rate set here, not by the rules).
UNTAXED_CARRY = TaxDecision(Decimal(0), TaxReason.MANUAL)


def _period_lines(
    subscription: Subscription,
    period: rules.Period,
    book: TaxBook,
    adjustments: list[SubscriptionAdjustment] | None = None,
) -> list[invoices.LineFields]:
    """The period's line, then each pending adjustment (proration) as a line of its own,
    all taxed by the tax rules for the customer and the price's tax category (a proration
    credit takes back tax at the rate its charge would take)."""
    price = subscription.price
    span = rules.describe_period(period.start, period.end)
    pending = subscription.pending_adjustments if adjustments is None else adjustments
    decision = book.decide(subscription.customer, TaxCategory(price.tax_category))
    return [
        invoices.LineFields(
            description=f"{price.product} ({span})",
            quantity=subscription.quantity,
            unit_amount=price.unit_amount,
        ).taxed(decision),
        *(
            invoices.LineFields(description=a.description, quantity=1, unit_amount=a.amount).taxed(
                UNTAXED_CARRY if a.tax_included else decision
            )
            for a in pending
        ),
    ]


def _period_description(subscription: Subscription, period: rules.Period) -> str:
    span = rules.describe_period(period.start, period.end)
    return f"Subscription to {subscription.price.product}, {span}"


def _period_metadata(subscription: Subscription, period: rules.Period) -> dict[str, str]:
    return {
        "subscription": subscription.id,
        "period_start": period.start.isoformat(),
        "period_end": period.end.isoformat(),
    }


def _invoice_periods(
    session: Session, due: Sequence[tuple[Subscription, rules.Period]], now: datetime
) -> list[str]:
    """Invoice each subscription's `period` in the caller's transaction, for a new
    subscription, one catching up, or a billing run's chunk alike: the period's line and
    every pending adjustment (proration) on a new invoice, finalized with the others by
    `invoices.finalize_many` (which records the charge or the due date, the PDF and the
    emails), and the period's row that makes it the only invoice of this period. A credit
    larger than the period's price brings the invoice to zero and waits, as an adjustment
    of its own, for the next one. The subscriptions are row-locked by the caller (or just
    created); each moves on to the period invoiced. Returns the invoices' ids, a table at
    a time whatever their number."""
    today = clock.today()
    invoice_rows: list[dict[str, Any]] = []
    line_rows: list[dict[str, Any]] = []
    period_rows: list[dict[str, Any]] = []
    carried_rows: list[dict[str, Any]] = []
    discount_rows: list[tuple[str, list[discounts.AppliedDiscount], tuple[int, ...]]] = []
    book = TaxBook(session)
    # Which discounts each period's invoice gets, read (and locked) for all at once.
    applicable = discounts.applicable_discounts(
        session,
        [
            discounts.InvoiceDiscountsWanted(
                customer_id=subscription.customer_id,
                subscription_id=subscription.id,
                invoice_id=None,
                period_start=period.start,
                currency=subscription.price.currency,
            )
            for subscription, period in due
        ],
    )
    for (subscription, period), applied in zip(due, applicable, strict=True):
        currency = subscription.price.currency
        lines = _period_lines(subscription, period, book)
        step = charge_step(currency)
        totals = invoice_rules.invoice_totals((line.for_totals() for line in lines), step=step)
        invoice_id = new_id("in")
        if totals.total < 0:
            # Tax included: it moves what is owed, tax and all, and is not itself a supply.
            lines.append(
                invoices.LineFields(
                    description="Credit carried forward to the next invoice",
                    quantity=1,
                    unit_amount=-totals.total,
                ).taxed(UNTAXED_CARRY)
            )
            carried_rows.append(
                {
                    "id": new_id("adj"),
                    "subscription_id": subscription.id,
                    "description": "Credit carried forward from the previous invoice",
                    "amount": totals.total,
                    "currency": currency,
                    "tax_included": True,
                }
            )
        if applied or totals.total < 0:
            # A carried credit brings the invoice to zero, and no discount takes it below.
            totals = invoice_rules.invoice_totals(
                (line.for_totals() for line in lines),
                step=step,
                discounts=[a.terms for a in applied],
            )
        if applied:
            discount_rows.append((invoice_id, applied, totals.discount_amounts))
        send_invoice = subscription.collection_method == CollectionMethod.SEND_INVOICE
        days = subscription.days_until_due
        invoice_rows.append(
            {
                "id": invoice_id,
                "customer_id": subscription.customer_id,
                "status": InvoiceStatus.DRAFT.value,
                "currency": currency,
                "collection_method": subscription.collection_method,
                # Counted from the day the invoice is issued, on the service's clock.
                "due_date": today + timedelta(days=days)
                if send_invoice and days is not None
                else None,
                "description": _period_description(subscription, period),
                "metadata": _period_metadata(subscription, period),
                "subtotal": totals.subtotal,
                "discount": totals.discount,
                "tax": totals.tax,
                "total": totals.total,
            }
        )
        for line, net, discount, tax in zip(
            lines, totals.line_nets, totals.line_discounts, totals.line_taxes, strict=True
        ):
            line_rows.append(
                {
                    "id": new_id("il"),
                    "invoice_id": invoice_id,
                    "description": line.description,
                    "quantity": line.quantity,
                    "unit_amount": line.unit_amount,
                    "tax_rate": line.percentage,
                    "tax_rate_id": line.tax_rate_id,
                    "tax_reason": line.tax_reason.value if line.tax_reason else None,
                    "tax_inclusive": line.tax_inclusive,
                    "amount": net,
                    "discount_amount": discount,
                    "tax": tax,
                }
            )
        period_rows.append(
            {
                "subscription_id": subscription.id,
                "period_start": period.start,
                "period_end": period.end,
                "period_index": period.index,
                "invoice_id": invoice_id,
            }
        )
        for adjustment in subscription.pending_adjustments:
            adjustment.invoice_id = invoice_id
        subscription.latest_invoice_id = invoice_id
        if subscription.status == SubscriptionStatus.TRIALING:
            # Its first paid period: the trial is over.
            subscription.status = rules.require_transition(
                subscription.status, SubscriptionStatus.ACTIVE
            ).value
        subscription.current_period_index = period.index
        subscription.current_period_start = period.start
        subscription.current_period_end = period.end
    if not invoice_rows:
        return []
    ids = [row["id"] for row in invoice_rows]
    # The subscriptions' and adjustments' changes point at these invoices: they are flushed
    # at commit, after the inserts, not before the first of them.
    with session.no_autoflush:
        session.execute(insert(Invoice.__table__), invoice_rows)
        events.record_many(
            session,
            EventType.INVOICE_CREATED,
            [(row["id"], row["customer_id"]) for row in invoice_rows],
        )
        if einvoices.required():
            # Each draft is checked as stored, lines and discounts and all, and one that
            # cannot yield the e-invoice required stays a draft for an operator to fix.
            session.execute(insert(InvoiceLine.__table__), line_rows)
            discounts.record_many_invoice_discounts(session, discount_rows)
            held = einvoices.refusals_before_finalizing(session, ids)
            _hold_drafts(session, held, {row["id"]: row["customer_id"] for row in invoice_rows})
            invoices.finalize_many(session, [i for i in ids if i not in held], now)
            session.execute(insert(SubscriptionPeriod.__table__), period_rows)
        else:
            invoices.finalize_many(session, ids, now)
            # After the invoices' own update (finalize_many's first write): a row that
            # refers to an invoice locks it (key share), and updating a row this
            # transaction has locked costs more than locking it after.
            session.execute(insert(InvoiceLine.__table__), line_rows)
            session.execute(insert(SubscriptionPeriod.__table__), period_rows)
            discounts.record_many_invoice_discounts(session, discount_rows)
        if carried_rows:
            session.execute(insert(SubscriptionAdjustment.__table__), carried_rows)
    for row in period_rows:
        log.info(
            "subscription.period_invoiced",
            subscription_id=row["subscription_id"],
            invoice_id=row["invoice_id"],
            period_start=row["period_start"].isoformat(),
        )
    return ids


def _hold_drafts(
    session: Session, held: Mapping[str, ServiceError], customers: Mapping[str, str]
) -> None:
    """The period's invoice stays a draft (the period is still invoiced once: by it), its
    reason recorded as an event and logged; finalizing it through the API once the data
    is fixed checks again, and charges or sends it as any other."""
    if not held:
        return
    events.record_many(
        session,
        EventType.INVOICE_FINALIZATION_FAILED,
        [(invoice_id, customers[invoice_id]) for invoice_id in held],
    )
    for invoice_id, refusal in held.items():
        log.warning(
            "subscription.invoice_held_as_draft",
            invoice_id=invoice_id,
            code=refusal.code,
            param=refusal.param,
            reason=str(refusal),
        )


def _invoice_last_adjustments(session: Session, subscription: Subscription) -> str | None:
    """A subscription ending at period end still owes what changed during its last period
    (an upgrade's prorated charge): that goes on a final invoice of its own, with no period
    line, rather than being lost with the subscription. A net credit cannot be collected by
    an invoice; it is logged for an operator (a refund is their call) and left recorded."""
    adjustments = list(subscription.pending_adjustments)
    if not adjustments:
        return None
    owed = sum(a.amount for a in adjustments)
    if owed <= 0:
        log.warning(
            "subscription.ended_with_credit",
            subscription_id=subscription.id,
            credit=-owed,
            currency=subscription.price.currency,
        )
        return None
    send_invoice = subscription.collection_method == CollectionMethod.SEND_INVOICE
    invoice = invoices.create_invoice(
        invoices.InvoiceFields(
            customer_id=subscription.customer_id,
            collection_method=CollectionMethod(subscription.collection_method),
            currency=subscription.price.currency,
            due_date=(
                clock.today() + timedelta(days=subscription.days_until_due)
                if send_invoice and subscription.days_until_due is not None
                else None
            ),
            description=f"Final invoice of the subscription to {subscription.price.product}",
            metadata={"subscription": subscription.id, "final": "true"},
            subscription_id=subscription.id,
            lines=[
                invoices.LineFields(
                    description=a.description,
                    quantity=1,
                    unit_amount=a.amount,
                    tax_category=TaxCategory(subscription.price.tax_category),
                ).taxed(UNTAXED_CARRY)
                if a.tax_included
                else invoices.LineFields(
                    description=a.description,
                    quantity=1,
                    unit_amount=a.amount,
                    tax_category=TaxCategory(subscription.price.tax_category),
                )
                for a in adjustments
            ],
        )
    )
    for adjustment in adjustments:
        adjustment.invoice_id = invoice.id
    invoices.finalize_invoice(invoice.id)
    subscription.latest_invoice_id = invoice.id
    return invoice.id


def update_subscription(
    subscription_id: str, *, quantity: int | None = None, price_id: str | None = None
) -> Subscription:
    """Change the quantity or the price (same currency and interval) from now on. The rest
    of the current period is prorated to the day onto the next invoice: a credit for the
    old plan's unused days, a charge for the new plan's remaining days."""
    with transaction() as session:
        subscription = _locked(session, subscription_id)
        if subscription.status not in rules.BILLABLE:
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
        if subscription.status == SubscriptionStatus.TRIALING:
            # Nothing was charged for the trial, so nothing is prorated: the first invoice
            # simply bills the plan as it stands at the trial's end.
            subscription.price = new_price
            subscription.quantity = new_quantity
            events.record(
                session, EventType.SUBSCRIPTION_UPDATED, subscription.id, subscription.customer_id
            )
            log.info(
                "subscription.updated",
                subscription_id=subscription_id,
                price_id=new_price.id,
                quantity=new_quantity,
                trialing=True,
            )
            return subscription
        # The next invoice holds the period's line, every pending adjustment and perhaps a
        # carried credit: a change it could not hold waits until that invoice is issued.
        room = invoice_rules.MAX_LINES_PER_INVOICE - len(subscription.pending_adjustments)
        if room < 2 + 2:
            raise invoices.TooManyLines(
                "the next invoice cannot hold another change of this subscription this "
                "period; change it once the period's invoice is issued",
                param="quantity" if quantity is not None else "price",
            )
        now = clock.now()
        proration = rules.prorate_change(
            old_unit_amount=old_price.unit_amount,
            old_quantity=subscription.quantity,
            new_unit_amount=new_price.unit_amount,
            new_quantity=new_quantity,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
            at=now,
            step=charge_step(new_price.currency),
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
        events.record(
            session, EventType.SUBSCRIPTION_UPDATED, subscription.id, subscription.customer_id
        )
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
    adjustments are dropped with it. During a trial, either way, nothing is ever charged:
    the trial's end then ends the subscription instead of invoicing it."""
    with transaction() as session:
        subscription = _locked(session, subscription_id)
        if not rules.may_become(subscription.status, SubscriptionStatus.CANCELED):
            raise SubscriptionNotActive(f"a {subscription.status} subscription cannot be canceled")
        now = clock.now()
        subscription.canceled_at = now
        if at_period_end:
            subscription.cancel_at_period_end = True
        else:
            subscription.status = SubscriptionStatus.CANCELED.value
            subscription.ended_at = now
        events.record(
            session,
            EventType.SUBSCRIPTION_UPDATED if at_period_end else EventType.SUBSCRIPTION_CANCELED,
            subscription.id,
            subscription.customer_id,
        )
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
        if subscription.status not in rules.BILLABLE or subscription.current_period_end > now:
            return None
        if subscription.cancel_at_period_end:
            subscription.status = rules.require_transition(
                subscription.status, SubscriptionStatus.CANCELED
            ).value
            subscription.ended_at = subscription.current_period_end
            final = _invoice_last_adjustments(session, subscription)
            events.record(
                session, EventType.SUBSCRIPTION_CANCELED, subscription.id, subscription.customer_id
            )
            log.info("subscription.ended", subscription_id=subscription_id, final_invoice=final)
            return "ended"
        following = rules.period(
            subscription.billing_cycle_anchor,
            Interval(subscription.price.interval),
            subscription.current_period_index + 1,
        )
        _invoice_periods(session, [(subscription, following)], now)
        events.record(
            session, EventType.SUBSCRIPTION_UPDATED, subscription.id, subscription.customer_id
        )
    return "invoiced"


def bill_due_subscriptions(
    *, batch_size: int = RUN_BATCH, chunk_size: int = RUN_CHUNK
) -> BillingRunResult:
    """Every active (or trialing) subscription whose period (or trial) ended by now (the
    service's clock, read once) gets its next period invoiced, missed periods included (up
    to MAX_PERIODS_PER_RUN each).
    Reads ids in batches by keyset (id > last), so memory stays bounded.

    The common case goes in chunks: one period for each of `chunk_size` subscriptions in
    one transaction of a fixed number of statements (`_bill_chunk`). Whatever a chunk
    cannot take (an ending subscription, a credit larger than the period) and every chunk
    that fails goes one period per transaction through `bill_next_period`, so that a
    failure is logged and left to the next run while the others go on."""
    now = clock.now()
    run = _RunCount()
    last = ""
    while True:
        batch = list(
            db.session.scalars(
                select(Subscription.id)
                .where(
                    Subscription.status.in_(rules.BILLABLE),
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
        for start in range(0, len(batch), chunk_size):
            _bill_ids(batch[start : start + chunk_size], now, run)
        last = batch[-1]
    log.info(
        "billing_run.finished",
        invoices_created=run.created,
        ended=run.ended,
        failures=run.failures,
    )
    return BillingRunResult(
        ran=True, invoices_created=run.created, subscriptions_ended=run.ended, failures=run.failures
    )


@dataclass
class _RunCount:
    created: int = 0
    ended: int = 0
    failures: int = 0


def _bill_ids(ids: list[str], now: datetime, run: _RunCount) -> None:
    pending = ids
    for _ in range(MAX_PERIODS_PER_RUN):
        if not pending:
            return
        try:
            outcome = _bill_chunk(pending, now)
        except Exception:
            log.warning("billing_run.chunk_failed", subscriptions=len(pending), exc_info=True)
            for subscription_id in pending:
                _bill_one(subscription_id, now, run)
            return
        run.created += outcome.invoiced
        for subscription_id in outcome.one_by_one:
            _bill_one(subscription_id, now, run)
        pending = outcome.still_due


def _bill_one(subscription_id: str, now: datetime, run: _RunCount) -> None:
    for _ in range(MAX_PERIODS_PER_RUN):
        try:
            outcome = bill_next_period(subscription_id, now)
        except Exception:  # one subscription must not stop the run
            log.exception("billing_run.subscription_failed", subscription_id=subscription_id)
            run.failures += 1
            return
        if outcome is None:
            return
        if outcome == "ended":
            run.ended += 1
            return
        run.created += 1


@dataclass(frozen=True)
class _ChunkOutcome:
    invoiced: int
    still_due: list[str]  # a further period has also begun (catching up)
    one_by_one: list[str]  # ending: billed alone, with its final invoice


def _bill_chunk(ids: list[str], now: datetime) -> _ChunkOutcome:
    """One period for each due subscription among `ids`, in one transaction of a fixed
    number of statements (`_invoice_periods`). The subscriptions' row locks and the period
    key guard it exactly as they guard one subscription billed alone."""
    one_by_one: list[str] = []
    due: list[tuple[Subscription, rules.Period]] = []
    with transaction() as session:
        subscriptions = (
            session.scalars(
                select(Subscription)
                .where(
                    Subscription.id.in_(ids),
                    Subscription.status.in_(rules.BILLABLE),
                    Subscription.current_period_end <= now,
                )
                .order_by(Subscription.id)
                .with_for_update(of=Subscription)
                .options(
                    joinedload(Subscription.price),
                    joinedload(Subscription.customer),
                    joinedload(Subscription.pending_adjustments),
                )
                .execution_options(populate_existing=True)
            )
            .unique()
            .all()
        )
        for subscription in subscriptions:
            if subscription.cancel_at_period_end:
                one_by_one.append(subscription.id)  # it ends, with a final invoice
                continue
            following = rules.period(
                subscription.billing_cycle_anchor,
                Interval(subscription.price.interval),
                subscription.current_period_index + 1,
            )
            due.append((subscription, following))
        invoiced = _invoice_periods(session, due, now)
        events.record_many(
            session, EventType.SUBSCRIPTION_UPDATED, [(s.id, s.customer_id) for s, _ in due]
        )
    still_due = [s.id for s, period in due if period.end <= now]
    return _ChunkOutcome(len(invoiced), still_due, one_by_one)


def run_billing() -> BillingRunResult:
    """The scheduled billing run: one at a time across every process (advisory lock)."""
    with locks.exclusive(BILLING_RUN_LOCK) as taken:
        if not taken:
            return BillingRunResult(ran=False)
        return bill_due_subscriptions()


# --- the notice of a trial's end ----------------------------------------------------------


def notify_trials_ending(*, batch_size: int = RUN_BATCH) -> int:
    """Every trial ending within TRIAL_WILL_END_DAYS and not yet told gets its
    `subscription.trial_will_end` event and email, each subscription in its own transaction
    (`notify_trial_ending`). Returns how many were told by this call."""
    now = clock.now()
    notice_days = context.settings().trial_will_end_days
    told = 0
    last = ""
    while True:
        batch = list(
            db.session.scalars(
                select(Subscription.id)
                .where(
                    Subscription.status == SubscriptionStatus.TRIALING.value,
                    Subscription.trial_will_end_notified_at.is_(None),
                    Subscription.trial_end > now,
                    Subscription.trial_end <= now + timedelta(days=notice_days),
                    Subscription.id > last,
                )
                .order_by(Subscription.id)
                .limit(batch_size)
            )
        )
        db.session.commit()
        if not batch:
            return told
        for subscription_id in batch:
            try:
                told += notify_trial_ending(subscription_id, now, notice_days)
            except Exception:  # one subscription must not keep the others untold
                log.exception("trial_will_end.failed", subscription_id=subscription_id)
        last = batch[-1]


def notify_trial_ending(subscription_id: str, now: datetime, notice_days: int) -> bool:
    """In one transaction, with the subscription's row locked: mark it told, record the
    event and queue the email. A second run (or a concurrent one, waiting on the lock)
    finds it told and does nothing; the email's ledger key, named after the trial's end,
    is the wall behind that. False when there was nothing to do."""
    with transaction() as session:
        subscription = _locked(session, subscription_id, for_billing=True)
        trial_end = subscription.trial_end
        if (
            subscription.status != SubscriptionStatus.TRIALING
            or subscription.trial_will_end_notified_at is not None
            or trial_end is None
            or not rules.trial_will_end_due(trial_end, now, notice_days)
        ):
            return False
        subscription.trial_will_end_notified_at = now
        events.record(
            session,
            EventType.SUBSCRIPTION_TRIAL_WILL_END,
            subscription.id,
            subscription.customer_id,
        )
        deliveries = emails.queue_subscription_email(
            session, TRIAL_WILL_END_EMAIL, subscription, occasion=trial_end.date().isoformat()
        )
    log.info(
        "subscription.trial_will_end",
        subscription_id=subscription_id,
        trial_end=trial_end.isoformat(),
        deliveries=deliveries,
    )
    return True
