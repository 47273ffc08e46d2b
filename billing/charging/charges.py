"""Charging an invoice exactly once, in atomic phases.

1. Under the invoice's row lock: re-read it, stop if it is paid or void or the attempt is
   no longer to be run, claim the attempt's ledger key, mark it started; commit.
2. Outside any transaction: create a confirmed, off-session PaymentIntent, passing the
   ledger key as Stripe's idempotency key and writing it into the intent's metadata.
3. In one transaction: record the outcome on the attempt, the invoice and the ledger.

A lost answer (timeout, connection reset, 5xx) leaves the attempt *unknown*. The next run
first asks Stripe for an intent carrying the ledger key and adopts it; only when Stripe has
none is the same attempt sent again, with the same key. The ledger's lease makes sure that
only one process at a time may be between phases 1 and 3 for an attempt, and its fencing
token that a process which outlived its lease can no longer record anything.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, exists, func, insert, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from billing.adapters.stripe_gateway import (
    CardDeclined,
    PaymentIntentResult,
    StripeGateway,
    StripeRateLimited,
    StripeRejected,
    StripeUnavailable,
)
from billing.charging import rules as charge_rules
from billing.charging.rules import ChargeStatus
from billing.charging.store import ChargeStore, ChargeWork, Counter
from billing.documents import documents
from billing.domain.money import AmountNotChargeable, UnknownCurrency, to_stripe_amount
from billing.dunning import delinquency
from billing.dunning import schedule as dunning_schedule
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.invoicing import rules as invoice_rules
from billing.invoicing.rules import InvoiceStatus
from billing.models import (
    CHARGE_IN_FLIGHT,
    ChargeAttempt,
    Customer,
    Invoice,
    OutboxJob,
)
from billing.notifications import emails
from billing.platform import context, jobs, ledger
from billing.platform.errors import Conflict, NotFound, ServiceError, TransientJobError
from billing.platform.ids import new_id
from billing.platform.ledger import Claim, ClaimResult
from billing.platform.logging import get_logger
from billing.platform.metrics import AMOUNT_MISMATCHES, CHARGES, count_on_commit
from billing.platform.outbox import JobWork, has_unfinished_job, record_jobs
from billing.platform.prebuilt import Prebuilt
from billing.platform.unit_of_work import transaction

log = get_logger(__name__)

LEDGER_SCOPE = "stripe.payment_intent"
# An attempt unknown or started this long ago, with no job left to finish it (its job gave
# up, say, after runs killed one after another), is picked up by the reconciliation
# sweep: soon, since an unknown charge must settle by itself once faults stop.
RECONCILE_AFTER = timedelta(seconds=30)
# An attempt waiting for 3-D Secure is looked at again this often (the webhook may be
# lost), and given up after the deadline (Stripe's own links last about a day).
AUTHENTICATION_POLL = timedelta(minutes=10)
AUTHENTICATION_DEADLINE = timedelta(hours=23)
PAYABLE = invoice_rules.PAYABLE
AMOUNT_MISMATCH = "amount_mismatch"


# Applies an outcome to the locked attempt and invoice, inside the recording transaction.
Apply = Callable[[ChargeStore, ChargeAttempt, Invoice], None]


class InvoiceNotPayable(Conflict):
    code = "invoice_not_payable"


class TooManyPaymentAttempts(ServiceError):
    code = "too_many_payment_attempts"
    status = 429
    # "Not today": a retry once the oldest attempt leaves the window may succeed.
    retryable = True

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, param="id")
        self.retry_after = retry_after


# The "day" of PAY_ATTEMPTS_PER_INVOICE_PER_DAY: rolling, so that no midnight renews it.
ATTEMPT_CAP_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class ChargeRequest:
    attempt: ChargeAttempt
    job_id: str | None
    created: bool


def _in_flight(session: Session, invoice_id: str) -> ChargeAttempt | None:
    return session.scalars(
        select(ChargeAttempt).where(
            ChargeAttempt.invoice_id == invoice_id, ChargeAttempt.status.in_(CHARGE_IN_FLIGHT)
        )
    ).first()


def _latest_job_for(session: Session, attempt_id: str) -> str | None:
    return session.scalar(
        select(OutboxJob.id)
        .where(
            OutboxJob.name == jobs.CHARGE_INVOICE,
            OutboxJob.args["attempt_id"].astext == attempt_id,
        )
        .order_by(OutboxJob.id.desc())
        .limit(1)
    )


def start_attempt(session: Session, invoice: Invoice, *, source: str) -> tuple[ChargeAttempt, str]:
    """One invoice's `start_attempts` (row locked by the caller), with the attempt read
    back and its job's id."""
    [(attempt_id, job_id)] = start_attempts(
        session, [(invoice.id, invoice.amount_due, invoice.currency)], source=source
    ).values()
    attempt = session.get(ChargeAttempt, attempt_id)
    assert attempt is not None
    if "charge_attempts" in invoice.__dict__:
        # A loaded collection shows the new attempt without being read again (an
        # unloaded one is not loaded for this).
        set_committed_value(invoice, "charge_attempts", [*invoice.charge_attempts, attempt])
    return attempt, job_id


def start_attempts(
    session: Session, dues: Sequence[tuple[str, int, str]], *, source: str
) -> dict[str, tuple[str, str]]:
    """Record a new attempt and its job for each invoice, given as (id, amount due,
    currency) and locked (or just created) by the caller, in the caller's transaction: two
    multi-row inserts however many. Returns each invoice's (attempt id, job id)."""
    rows: list[dict[str, Any]] = []
    for invoice_id, amount, currency in dues:
        attempt_id = new_id("ca")
        rows.append(
            {
                "id": attempt_id,
                "invoice_id": invoice_id,
                "ledger_key": f"charge:{attempt_id}",
                "status": ChargeStatus.PENDING.value,
                "source": source,
                "amount": amount,
                "currency": currency,
            }
        )
    if not rows:
        return {}
    session.execute(insert(ChargeAttempt.__table__), rows)
    job_ids = record_jobs(session, jobs.CHARGE_INVOICE, [{"attempt_id": row["id"]} for row in rows])
    if len(rows) == 1:
        log.info(
            "charge.requested",
            invoice_id=rows[0]["invoice_id"],
            attempt_id=rows[0]["id"],
            source=source,
        )
    else:
        log.info("charge.requested", source=source, attempts=len(rows))
    return {
        row["invoice_id"]: (row["id"], job_id) for row, job_id in zip(rows, job_ids, strict=True)
    }


def _refuse_past_daily_cap(session: Session, invoice_id: str, cap: int) -> None:
    """Counted in PostgreSQL, under the invoice's row lock: every attempt of the last day,
    whoever started it, since each one is a charge on the card and a possible email."""
    window = ATTEMPT_CAP_WINDOW
    count, seconds_left = session.execute(
        select(
            func.count(),
            func.extract("epoch", func.min(ChargeAttempt.created_at) + window - func.now()),
        ).where(
            ChargeAttempt.invoice_id == invoice_id,
            ChargeAttempt.created_at > func.now() - window,
        )
    ).one()
    if count < cap:
        return
    raise TooManyPaymentAttempts(
        f"this invoice was tried {count} times in the last 24 hours, the most allowed; "
        "retry later or update the payment method",
        retry_after=max(1, math.ceil(seconds_left or 0)),
    )


def request_charge(
    invoice_id: str,
    *,
    customer_scope: str | None = None,
    source: str = "api",
    daily_attempt_cap: int | None = None,
    event: EventType | None = None,
) -> ChargeRequest:
    """Ask for a charge now: the attempt started, or the one already in flight. With a
    `daily_attempt_cap`, no new attempt is started once the invoice has had that many in
    24 hours. An `event` about the invoice is recorded with a new attempt."""
    with transaction() as session:
        invoice = session.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)
        if invoice is None or customer_scope not in (None, invoice.customer_id):
            raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
        running = _in_flight(session, invoice_id)
        if running is not None:
            return ChargeRequest(running, _latest_job_for(session, running.id), created=False)
        if invoice.status not in PAYABLE:
            raise InvoiceNotPayable(f"a {invoice.status} invoice cannot be paid", param="id")
        if invoice.amount_due <= 0:
            raise InvoiceNotPayable("this invoice has nothing left to pay", param="id")
        if daily_attempt_cap is not None:
            _refuse_past_daily_cap(session, invoice_id, daily_attempt_cap)
        attempt, job_id = start_attempt(session, invoice, source=source)
        if event is not None:
            events.record(session, event, invoice.id, invoice.customer_id)
    return ChargeRequest(attempt, job_id, created=True)


# --- the charge job ---------------------------------------------------------------------


def _finish_attempt(store: ChargeStore, attempt: ChargeAttempt, status: str) -> None:
    """The one change of an attempt's status once it was sent (or called off): through the
    attempt's transition table, with what the customer hears of it."""
    attempt.status = charge_rules.require_transition(attempt.status, ChargeStatus(status)).value
    if attempt.status in charge_rules.ANSWERED:
        attempt.finished_at = store.now()
    store.tell_customer(attempt)
    store.count(CHARGES.labels(outcome=status))


def _notify(attempt: ChargeAttempt) -> None:
    """What the customer hears of an attempt's end, recorded with the outcome itself."""
    session = db.session()
    invoice = attempt.invoice
    if attempt.status == ChargeStatus.SUCCEEDED:
        emails.queue_email(session, "payment_receipt", invoice, occasion=attempt.id)
        documents.request_render(session, invoice)  # the document now shows it paid
    elif attempt.status == ChargeStatus.FAILED:
        events.record(session, EventType.INVOICE_PAYMENT_FAILED, invoice.id, invoice.customer_id)
        # One email per failed attempt (its occasion), naming dunning's next retry.
        emails.queue_email(
            session,
            "payment_failed",
            invoice,
            occasion=attempt.id,
            context_=dunning_schedule.payment_failed_context(session, attempt),
        )
    elif attempt.status == ChargeStatus.REQUIRES_ACTION:
        emails.queue_email(session, "authentication_required", invoice, occasion=attempt.id)
        events.record(
            session, EventType.INVOICE_PAYMENT_ACTION_REQUIRED, invoice.id, invoice.customer_id
        )


@dataclass(frozen=True)
class _Prepared:
    claimed: ClaimResult
    stripe_customer_id: str
    payment_method: str
    # False once the invoice is paid or void: an earlier send may be reconciled, but
    # nothing new may be sent.
    may_create: bool
    amount: int
    currency: str
    ledger_key: str
    invoice_id: str
    known_intent: str | None


_LOCKED = Prebuilt(
    select(ChargeAttempt, Invoice, Customer)
    .join(Invoice, Invoice.id == ChargeAttempt.invoice_id)
    .join(Customer, Customer.id == Invoice.customer_id)
    .where(ChargeAttempt.id == bindparam("b_attempt_id"))
    .with_for_update(of=[ChargeAttempt, Invoice])
)


def _locked(session: Session, attempt_id: str) -> tuple[ChargeAttempt, Invoice, Customer] | None:
    """The attempt and its invoice, both row-locked, with the invoice's customer: one
    statement, locking the attempt's row before the invoice's as separate reads did. Both
    phases of every charge run it: prepared once per connection."""
    row = session.execute(
        _LOCKED.for_orm(session.connection()),
        {"b_attempt_id": attempt_id},
        execution_options={"populate_existing": True},
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


class SqlChargeStore:
    """The charge job's ChargeStore in production: its statements in the session's
    transaction, as the job always ran them."""

    def __init__(self, session: Session, work: JobWork | None) -> None:
        self.session = session
        self.work = work

    def locked(self, attempt_id: str) -> tuple[ChargeAttempt, Invoice, Customer] | None:
        return _locked(self.session, attempt_id)

    def locked_attempt(self, attempt_id: str) -> ChargeAttempt | None:
        return self.session.get(ChargeAttempt, attempt_id, with_for_update=True)

    def claim(self, attempt: ChargeAttempt) -> ClaimResult:
        return ledger.claim_in_transaction(
            LEDGER_SCOPE, attempt.ledger_key, attempt.id, lease=context.stripe_call_lease()
        )

    def complete_claim(
        self, claimed: ClaimResult, state: str, outcome: dict[str, Any] | None = None
    ) -> None:
        ledger.complete(claimed, state, outcome=outcome)

    def mark_claim_unknown(self, claimed: ClaimResult, outcome: dict[str, Any]) -> bool:
        return ledger.mark_unknown(claimed, outcome, commit=False)

    def release_claim(self, claimed: ClaimResult) -> None:
        ledger.release(claimed, commit=False)

    def now(self) -> Any:
        return func.now()

    def tell_customer(self, attempt: ChargeAttempt) -> None:
        _notify(attempt)

    def invoice_paid(self, invoice: Invoice) -> None:
        delinquency.clear_if_settled(self.session, invoice)
        events.record(self.session, EventType.INVOICE_PAID, invoice.id, invoice.customer_id)

    def count(self, counter: Counter) -> None:
        count_on_commit(self.session, counter)

    def finish_job(self) -> None:
        if self.work is not None:
            self.work.finish_job(self.session)


@dataclass(frozen=True)
class SqlChargeWork:
    """The charge job's ChargeWork in production: the runner's JobWork, each transaction
    the session's."""

    work: JobWork

    @property
    def gateways(self) -> context.Gateways:
        return self.work.gateways

    @contextmanager
    def transaction(self) -> Iterator[ChargeStore]:
        with transaction() as session:
            yield SqlChargeStore(session, self.work)


def charge_work(work: JobWork | ChargeWork | None = None) -> ChargeWork:
    """The charge job's unit of work: the runner's JobWork (or none, outside a job) runs
    on PostgreSQL; any other ChargeWork (an in-memory one, in a test) is used as it is."""
    if work is None:
        return SqlChargeWork(JobWork.outside_a_job())
    if isinstance(work, JobWork):
        return SqlChargeWork(work)
    return work


def _prepare(attempt_id: str, work: ChargeWork | None = None) -> _Prepared | str:
    """Phase 1: what to send, or the attempt's status when there is nothing (more) to send."""
    with (work or charge_work()).transaction() as store:
        locked = store.locked(attempt_id)
        if locked is None:
            return "missing"
        attempt, invoice, customer = locked
        if attempt.status in charge_rules.ANSWERED:
            return attempt.status
        if invoice.status not in PAYABLE and attempt.status == ChargeStatus.PENDING:
            # Nothing was sent for this attempt yet: it can simply be called off.
            _finish_attempt(store, attempt, ChargeStatus.CANCELED)
            log.info("charge.canceled", attempt_id=attempt_id, invoice_status=invoice.status)
            return "canceled"
        if not customer.stripe_customer_id:
            raise TransientJobError(f"customer {customer.id} is not on Stripe yet")
        if not customer.default_payment_method and attempt.status == ChargeStatus.PENDING:
            attempt.decline_code = "no_payment_method"
            attempt.failure_message = "The customer has no default payment method."
            _finish_attempt(store, attempt, "failed")
            return "failed"
        claimed = store.claim(attempt)
        if claimed.claim is Claim.DONE:
            return attempt.status  # recorded already, in the same commit as the attempt
        if attempt.status == ChargeStatus.PENDING:
            attempt.status = charge_rules.require_transition(
                attempt.status, ChargeStatus.STARTED
            ).value
            attempt.payment_method = customer.default_payment_method
        payment_method = attempt.payment_method or customer.default_payment_method
        assert payment_method is not None
        return _Prepared(
            claimed=claimed,
            stripe_customer_id=customer.stripe_customer_id,
            payment_method=payment_method,
            may_create=invoice.status in PAYABLE,
            amount=attempt.amount,
            currency=attempt.currency,
            ledger_key=attempt.ledger_key,
            invoice_id=attempt.invoice_id,
            known_intent=attempt.stripe_payment_intent_id,
        )


def execute_charge(attempt_id: str, *, work: JobWork | ChargeWork | None = None) -> str:
    """The `billing.charge_invoice` job. Returns the attempt's status afterwards."""
    work = charge_work(work)
    # Committed either way: nothing is held open across the network.
    prepared = _prepare(attempt_id, work)
    if prepared == "requires_action":
        return _follow_up_authentication(work, attempt_id)
    if isinstance(prepared, str):
        return prepared
    claimed = prepared.claimed
    stripe_customer_id, payment_method = prepared.stripe_customer_id, prepared.payment_method
    amount, currency, ledger_key = prepared.amount, prepared.currency, prepared.ledger_key
    invoice_id, known_intent = prepared.invoice_id, prepared.known_intent
    gateway = work.gateways.stripe

    if claimed.claim is Claim.RESUMED:
        try:
            found = find_intent_for_attempt(gateway, known_intent, ledger_key)
        except StripeUnavailable as exc:
            _record_unknown(work, attempt_id, claimed, str(exc))
            raise TransientJobError(f"Stripe unavailable while reconciling: {exc}") from exc
        if found is not None:
            log.info("charge.reconciled", attempt_id=attempt_id, intent_status=found.status)
            return _record_answer(work, attempt_id, claimed, prepared, found)
    if not prepared.may_create:
        # Stripe never got it, and the invoice is settled or void meanwhile: call it off.
        def called_off(store: ChargeStore, attempt: ChargeAttempt, invoice: Invoice) -> None:
            attempt.failure_message = f"called off: the invoice became {invoice.status}"
            _finish_attempt(store, attempt, "canceled")

        return _record(work, attempt_id, claimed, "canceled", called_off)

    try:
        intent = gateway.create_payment_intent(
            amount=amount,
            currency=currency,
            stripe_customer_id=stripe_customer_id,
            payment_method=payment_method,
            metadata={"invoice_id": invoice_id, "attempt_id": attempt_id, "ledger_key": ledger_key},
            idempotency_key=ledger_key,
        )
    except CardDeclined as exc:
        status = _record_failure(
            work,
            attempt_id,
            claimed,
            exc.code or "card_declined",
            exc.message,
            exc.payment_intent_id,
        )
        _cancel_leftover_intent(gateway, ledger_key, exc.payment_intent_id)
        return status
    except StripeRejected as exc:
        return _record_failure(work, attempt_id, claimed, exc.code or "rejected", exc.message, None)
    except AmountNotChargeable as exc:
        # Nothing was sent: an amount recorded before the charge step applied to it.
        return _record_failure(work, attempt_id, claimed, "amount_not_chargeable", str(exc), None)
    except UnknownCurrency as exc:
        # Nothing was sent: a currency recorded before only Stripe's were accepted.
        return _record_failure(work, attempt_id, claimed, "currency_not_supported", str(exc), None)
    except StripeUnavailable as exc:
        _record_unknown(work, attempt_id, claimed, str(exc))
        raise TransientJobError(f"Stripe's answer was lost; reconciling: {exc}") from exc
    except StripeRateLimited:
        # Stripe did not act. A first claim is let go, so the job's next run goes
        # straight ahead instead of waiting out the lease; a resumed one (an earlier
        # outcome unknown) keeps it, so that its next run asks Stripe first.
        if claimed.claim is Claim.NEW:
            with work.transaction() as store:
                store.release_claim(claimed)
        raise
    return _record_answer(work, attempt_id, claimed, prepared, intent)


def _record_answer(
    work: ChargeWork,
    attempt_id: str,
    claimed: ClaimResult,
    prepared: _Prepared,
    intent: PaymentIntentResult,
) -> str:
    """Phase 3: what Stripe answered about this attempt (the intent created, or the one found
    when reconciling) becomes its outcome. Only a PaymentIntent for the attempt's own amount
    and currency is recorded as what it says."""
    mismatch = amount_mismatch(prepared.amount, prepared.currency, intent)
    if mismatch is not None:
        return _record_mismatch(work, attempt_id, claimed, intent, mismatch, prepared.ledger_key)
    return _record_intent(work, attempt_id, claimed, intent)


def amount_mismatch(amount: int, currency: str, intent: PaymentIntentResult) -> str | None:
    """Why `intent` is not a payment of `amount` (our minor units) in `currency`, or None
    when it is one. Compared in Stripe's units, as Stripe reported them, so that no rounding
    of ours can hide a difference."""
    try:
        expected = to_stripe_amount(amount, currency)
        if intent.currency != currency:
            actual: int | None = None
        elif intent.stripe_amount is not None:
            actual = intent.stripe_amount
        else:
            actual = to_stripe_amount(intent.amount, intent.currency)
    except (AmountNotChargeable, UnknownCurrency):
        actual, expected = None, 0
    if actual == expected:
        return None
    return (
        f"PaymentIntent {intent.id} is for {intent.stripe_amount} "
        f"{intent.currency.upper() or '(no currency)'} in Stripe's units, not the "
        f"{amount} {currency.upper()} of this attempt ({expected} in Stripe's units)"
    )


def _mismatched(intent: PaymentIntentResult, message: str, source: str) -> Apply:
    """Record an attempt whose PaymentIntent is for another amount or currency: failed with
    its own code, the invoice left unpaid; loud, because money may have moved."""

    def record(store: ChargeStore, attempt: ChargeAttempt, invoice: Invoice) -> None:
        attempt.stripe_payment_intent_id = intent.id or attempt.stripe_payment_intent_id
        attempt.decline_code = AMOUNT_MISMATCH
        attempt.failure_message = message[:500]
        _finish_attempt(store, attempt, "failed")
        store.count(AMOUNT_MISMATCHES.labels(source=source))
        log.error(
            "charge.amount_mismatch",
            attempt_id=attempt.id,
            invoice_id=invoice.id,
            payment_intent=intent.id,
            intent_status=intent.status,
            intent_amount=intent.stripe_amount,
            intent_currency=intent.currency,
            attempt_amount=attempt.amount,
            attempt_currency=attempt.currency,
            via=source,
        )

    return record


def _record_mismatch(
    work: ChargeWork,
    attempt_id: str,
    claimed: ClaimResult,
    intent: PaymentIntentResult,
    message: str,
    ledger_key: str,
) -> str:
    status = _record(work, attempt_id, claimed, "failed", _mismatched(intent, message, "charge"))
    if intent.status != "succeeded" and intent.id:
        # Not a payment yet: make sure it never becomes one.
        _cancel_leftover_intent(work.gateways.stripe, ledger_key, intent.id)
    return status


def _cancel_leftover_intent(gateway: StripeGateway, ledger_key: str, intent_id: str | None) -> None:
    """A declined PaymentIntent waits for a new payment method; the customer could still
    confirm it later, after another attempt succeeded. Cancel it: a failed attempt must
    never turn into a second payment. Best effort: the webhook path catches the rest."""
    try:
        if intent_id is None:
            found = gateway.find_payment_intents_by_metadata("ledger_key", ledger_key)
            intent_id = found[0].id if found else None
        if intent_id is not None:
            gateway.cancel_payment_intent(intent_id)
    except (StripeUnavailable, StripeRejected) as exc:
        log.warning("charge.cancel_declined_intent_failed", ledger_key=ledger_key, error=str(exc))


def _follow_up_authentication(work: ChargeWork, attempt_id: str) -> str:
    """An attempt waiting for 3-D Secure: ask Stripe whether the customer finished (in case
    the webhook was lost), and past the deadline cancel the intent and fail the attempt,
    so that the invoice can be charged again (dunning) instead of waiting forever."""
    with transaction() as session:
        attempt = session.get(ChargeAttempt, attempt_id, with_for_update=True)
        assert attempt is not None
        intent_id = attempt.stripe_payment_intent_id
        expired = bool(
            session.scalar(select(func.now() - attempt.finished_at > AUTHENTICATION_DEADLINE))
        )
        attempt.updated_at = func.now()  # polled now: the sweep comes back in a while
    if intent_id is None:
        return "requires_action"
    gateway = work.gateways.stripe
    try:
        intent = gateway.retrieve_payment_intent(intent_id)
        if intent.status == "requires_action" and expired:
            intent = gateway.cancel_payment_intent(intent_id)
    except StripeUnavailable as exc:
        raise TransientJobError(f"Stripe unavailable while following up {attempt_id}") from exc
    if intent.status == "requires_action":
        return "requires_action"
    if intent.status == "canceled":
        intent = dataclasses.replace(
            intent,
            decline_code="authentication_not_completed",
            failure_message="The customer did not complete authentication in time.",
        )
    return apply_intent_from_stripe(attempt_id, intent)


def find_intent_for_attempt(
    gateway: StripeGateway, intent_id: str | None, ledger_key: str
) -> PaymentIntentResult | None:
    """Stripe's own truth about this attempt: its intent if we know the id, else any intent
    carrying our ledger key. A succeeded one wins if, against all odds, there are several."""
    if intent_id:
        return gateway.retrieve_payment_intent(intent_id)
    found = gateway.find_payment_intents_by_metadata("ledger_key", ledger_key)
    if not found:
        return None
    if len(found) > 1:
        log.error("charge.several_intents_for_one_key", ledger_key=ledger_key, count=len(found))
    return next((i for i in found if i.status == "succeeded"), found[0])


def _record_unknown(work: ChargeWork, attempt_id: str, claimed: ClaimResult, error: str) -> None:
    with work.transaction() as store:
        if not store.mark_claim_unknown(claimed, {"error": error[:500]}):
            return
        attempt = store.locked_attempt(attempt_id)
        assert attempt is not None
        attempt.status = charge_rules.require_transition(attempt.status, ChargeStatus.UNKNOWN).value
        attempt.failure_message = f"outcome unknown, reconciling: {error[:300]}"
    CHARGES.labels(outcome="unknown").inc()
    log.warning("charge.outcome_unknown", attempt_id=attempt_id, error=error[:300])


def _failed(code: str, message: str, intent_id: str | None) -> Apply:
    def failed(store: ChargeStore, attempt: ChargeAttempt, invoice: Invoice) -> None:
        attempt.decline_code = code
        attempt.failure_message = message
        attempt.stripe_payment_intent_id = intent_id or attempt.stripe_payment_intent_id
        _finish_attempt(store, attempt, "failed")

    return failed


def _record_failure(
    work: ChargeWork,
    attempt_id: str,
    claimed: ClaimResult,
    code: str,
    message: str,
    intent_id: str | None,
) -> str:
    return _record(work, attempt_id, claimed, "failed", _failed(code, message, intent_id))


def _needs_action(intent: PaymentIntentResult) -> Apply:
    def needs_action(store: ChargeStore, attempt: ChargeAttempt, invoice: Invoice) -> None:
        attempt.stripe_payment_intent_id = intent.id
        attempt.next_action = intent.next_action
        attempt.client_secret = intent.client_secret
        attempt.failure_message = "The customer must authenticate this payment."
        _finish_attempt(store, attempt, "requires_action")

    return needs_action


def _outcome(intent: PaymentIntentResult) -> tuple[str, Apply] | None:
    """What Stripe's word on an attempt's PaymentIntent makes of the attempt, for the charge
    job and the webhook alike: its new status and the change that records it; None while
    the intent is not final (processing, requires_confirmation...)."""
    if intent.status == "succeeded":
        return "succeeded", _apply_success(intent)
    if intent.status == "requires_action":
        return "requires_action", _needs_action(intent)
    if intent.status in ("requires_payment_method", "canceled"):
        code = intent.decline_code or intent.status
        message = intent.failure_message or f"the payment ended {intent.status}"
        return "failed", _failed(code, message, intent.id)
    return None


def _record_intent(
    work: JobWork | ChargeWork, attempt_id: str, claimed: ClaimResult, intent: PaymentIntentResult
) -> str:
    work = charge_work(work)
    outcome = _outcome(intent)
    if outcome is not None:
        status, apply = outcome
        return _record(work, attempt_id, claimed, status, apply)
    # Not final yet: ask again later.
    with work.transaction() as store:
        attempt = store.locked_attempt(attempt_id)
        assert attempt is not None
        attempt.stripe_payment_intent_id = intent.id
    _record_unknown(work, attempt_id, claimed, f"payment intent is {intent.status}")
    raise TransientJobError(f"payment intent {intent.id} is still {intent.status}")


def _apply_success(intent: PaymentIntentResult) -> Apply:
    def succeeded(store: ChargeStore, attempt: ChargeAttempt, invoice: Invoice) -> None:
        attempt.stripe_payment_intent_id = intent.id
        attempt.decline_code = None
        attempt.failure_message = None
        _finish_attempt(store, attempt, "succeeded")
        # The attempt's own amount: an intent for any other is never recorded as paid.
        mark_invoice_paid(store, invoice, attempt.amount)

    return succeeded


def mark_invoice_paid(store: ChargeStore, invoice: Invoice, amount: int) -> None:
    """Money arrived for this invoice. Never moves an invoice backwards; a payment on a
    void invoice is recorded on its attempt and logged for an operator to refund."""
    if invoice.status in PAYABLE:
        invoice.amount_paid = invoice.amount_paid + min(invoice.amount_due, amount)
        invoice.status = invoice_rules.require_transition(invoice.status, InvoiceStatus.PAID).value
        invoice.paid_at = store.now()
        store.invoice_paid(invoice)
        log.info("invoice.paid", invoice_id=invoice.id, amount=amount)
    elif invoice.status == InvoiceStatus.VOID.value:
        log.error("charge.succeeded_on_void_invoice", invoice_id=invoice.id, amount=amount)


def _record(
    work: ChargeWork, attempt_id: str, claimed: ClaimResult, ledger_state: str, apply: Apply
) -> str:
    try:
        with work.transaction() as store:
            locked = store.locked(attempt_id)
            assert locked is not None
            attempt, invoice, _ = locked
            try:
                apply(store, attempt, invoice)
            except charge_rules.IllegalChargeTransition:
                # Stripe's webhook recorded this attempt's outcome while this run held the
                # claim, and overruled it: the ledger says so (LeaseLost). Anything else
                # is a real refusal, and rolls back.
                store.complete_claim(claimed, "failed")
                raise
            store.complete_claim(
                claimed,
                "failed" if ledger_state in ("failed", "canceled") else "succeeded",
                outcome={
                    "status": ledger_state,
                    "payment_intent": attempt.stripe_payment_intent_id,
                },
            )
            # The charge job's last write (only the charge job records an outcome here):
            # the job ends in the same commit as its attempt.
            store.finish_job()
    except ledger.LeaseLost as exc:
        raise TransientJobError(f"attempt {attempt_id} was taken over; it records") from exc
    log.info("charge.recorded", attempt_id=attempt_id, status=ledger_state)
    return ledger_state


# --- what Stripe tells us by webhook -------------------------------------------------------


def apply_intent_from_stripe(attempt_id: str, intent: PaymentIntentResult) -> str:
    """Apply what Stripe says about an attempt's PaymentIntent (a webhook), through the same
    outcome as the charge job records and the same ledger entry (overruling whoever holds
    it), and never backwards: a succeeded attempt stays so, and a failed one moves only if
    money did arrive after all."""
    found = _outcome(intent)
    with transaction() as session:
        # Stripe's word on its own: no job ends with it.
        store = SqlChargeStore(session, None)
        attempt = session.get(ChargeAttempt, attempt_id, with_for_update=True)
        if attempt is None or found is None:
            return "ignored"
        outcome, apply = found
        invoice = session.get(Invoice, attempt.invoice_id, with_for_update=True)
        assert invoice is not None
        current = attempt.status
        if current == "succeeded" or current == outcome:
            return "ignored"
        if current in ("failed", "canceled") and outcome != "succeeded":
            return "ignored"
        if outcome == "succeeded" and _another_success(session, attempt):
            # Money arrived a second time for this invoice (a declined intent confirmed
            # later). Record it loudly instead of failing: an operator refunds it.
            attempt.stripe_payment_intent_id = intent.id
            attempt.decline_code = "duplicate_payment"
            attempt.failure_message = (
                f"{intent.amount} was paid on intent {intent.id} after another attempt had "
                "paid this invoice; refund it"
            )
            log.error("charge.duplicate_payment", attempt_id=attempt_id, payment_intent=intent.id)
            return "duplicate_payment"
        mismatch = amount_mismatch(attempt.amount, attempt.currency, intent)
        if mismatch is not None:
            if attempt.decline_code == AMOUNT_MISMATCH:
                return "ignored"  # recorded already, by the charge job or an earlier event
            _mismatched(intent, mismatch, "webhook")(store, attempt, invoice)
            outcome = "failed"
        else:
            apply(store, attempt, invoice)
        ledger.overrule(
            LEDGER_SCOPE,
            attempt.ledger_key,
            "failed" if outcome == "failed" else "succeeded",
            {
                "status": outcome,
                "payment_intent": intent.id,
                "via": "webhook",
                **({"reason": AMOUNT_MISMATCH} if mismatch is not None else {}),
            },
        )
    log.info("charge.updated_by_stripe", attempt_id=attempt_id, was=current, now=outcome)
    return AMOUNT_MISMATCH if mismatch is not None else outcome


def _another_success(session: Session, attempt: ChargeAttempt) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    ChargeAttempt.invoice_id == attempt.invoice_id,
                    ChargeAttempt.status == ChargeStatus.SUCCEEDED,
                    ChargeAttempt.id != attempt.id,
                )
            )
        )
    )


def attempt_for_intent(intent_id: str | None, metadata: dict[str, str]) -> str | None:
    """Our attempt behind a PaymentIntent: by its id, else by the ids we wrote in metadata."""
    if intent_id:
        found = db.session.scalar(
            select(ChargeAttempt.id).where(ChargeAttempt.stripe_payment_intent_id == intent_id)
        )
        if found:
            return found
    if metadata.get("attempt_id"):
        return db.session.scalar(
            select(ChargeAttempt.id).where(ChargeAttempt.id == metadata["attempt_id"])
        )
    return None


# --- reconciliation sweep -----------------------------------------------------------------


def reconcile_stuck_attempts(limit: int = 200) -> int:
    """Beat's safety net: every attempt left unknown or started past the reconcile delay,
    with no unfinished job to finish it, gets a new charge job (which reconciles first)."""
    with transaction() as session:
        unfinished_job = has_unfinished_job(jobs.CHARGE_INVOICE, "attempt_id", ChargeAttempt.id)
        stuck = list(
            session.scalars(
                select(ChargeAttempt.id)
                .where(
                    or_(
                        ChargeAttempt.status.in_(
                            (ChargeStatus.PENDING, ChargeStatus.STARTED, ChargeStatus.UNKNOWN)
                        )
                        & (ChargeAttempt.updated_at < func.now() - RECONCILE_AFTER),
                        (ChargeAttempt.status == ChargeStatus.REQUIRES_ACTION)
                        & (ChargeAttempt.updated_at < func.now() - AUTHENTICATION_POLL),
                    ),
                    ~unfinished_job,
                )
                .order_by(ChargeAttempt.updated_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        record_jobs(session, jobs.CHARGE_INVOICE, [{"attempt_id": a} for a in stuck])
    if stuck:
        log.warning("charge.reconcile_sweep", attempts=len(stuck))
    return len(stuck)
