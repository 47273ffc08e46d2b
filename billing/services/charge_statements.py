"""The charge job's common case in two statements: taking a new attempt, and recording its
success. Everything else (a resumed or unknown attempt, a decline, 3-D Secure, a void
invoice, a delinquent customer, a lost lease) goes the ORM way in `charges`, which
re-checks all of it; these statements only ever do the plain case, or nothing at all.

Each is one autocommitted statement of data-modifying CTEs, prebuilt (compiled once,
PREPAREd once per connection): the charge path's ORM work and its BEGIN/COMMIT round trips
cost more CPU per charge than the Stripe call itself.

- **Take.** Lock the attempt and its invoice (the same rows, in the same order, as the ORM
  phase), and, only if the attempt is still pending, the invoice payable and the customer
  on Stripe with a default card, claim the attempt's ledger key (a NEW claim) and mark the
  attempt started. No claim, no change: the caller then runs the ORM phase.
- **Record a success.** Lock the attempt, invoice and customer again; only if the attempt
  is started, the invoice payable and the customer not delinquent does the ledger entry
  complete, and only if this very claim completed it do the attempt, the invoice, the
  receipt email, its job, the re-render job and the charge job's own end follow. Nothing
  completed, nothing changed: the caller records through the ORM phase instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    String,
    bindparam,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert

from billing import jobs
from billing.domain.invoices import InvoiceStatus
from billing.logging import get_logger
from billing.models import ChargeAttempt, Customer, EmailDelivery, Invoice, OutboxJob
from billing.prebuilt import Prebuilt
from billing.services import ledger, outbox

log = get_logger(__name__)

LEDGER_SCOPE = "stripe.payment_intent"
PAYABLE = (InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)
RECEIPT = "payment_receipt"

_attempts = ChargeAttempt.__table__
_invoices = Invoice.__table__
_customers = Customer.__table__
_deliveries = EmailDelivery.__table__
_jobs = OutboxJob.__table__


_ATTEMPT_ID = bindparam("b_attempt_id", type_=String())


def _payable(status: Any) -> Any:
    # Equalities, not IN: a prebuilt statement takes no expanding list.
    return or_(*(status == value for value in PAYABLE))


def _locked(*columns: Any) -> Any:
    """The attempt with its invoice and customer, attempt and invoice row-locked."""
    return (
        select(_attempts.c.id, *columns)
        .select_from(
            _attempts.join(_invoices, _invoices.c.id == _attempts.c.invoice_id).join(
                _customers, _customers.c.id == _invoices.c.customer_id
            )
        )
        .where(_attempts.c.id == _ATTEMPT_ID)
        .with_for_update(of=[_attempts, _invoices])
    )


# --- take ----------------------------------------------------------------------------------

_TO_CHARGE = _locked(
    _attempts.c.invoice_id,
    _attempts.c.ledger_key,
    _attempts.c.status,
    _attempts.c.amount,
    _attempts.c.currency,
    _invoices.c.status.label("invoice_status"),
    _customers.c.stripe_customer_id,
    _customers.c.default_payment_method,
    _customers.c.email,
    _customers.c.billing_emails,
).cte("attempt")
_CLAIM = ledger.new_claim(
    LEDGER_SCOPE,
    _TO_CHARGE.c.ledger_key,
    _TO_CHARGE.c.id,  # the fingerprint: the attempt that owns the key
    _TO_CHARGE.c.status == "pending",
    _payable(_TO_CHARGE.c.invoice_status),
    _TO_CHARGE.c.stripe_customer_id.is_not(None),
    _TO_CHARGE.c.default_payment_method.is_not(None),
)
_ATTEMPT_STARTED = (
    update(_attempts)
    .where(_attempts.c.id == _ATTEMPT_ID, exists(select(_CLAIM.c.id)))
    .values(
        status=literal("started"),
        payment_method=select(_TO_CHARGE.c.default_payment_method).scalar_subquery(),
        updated_at=func.now(),
    )
    .returning(_attempts.c.id)
    .cte("attempt_started")
)
_TAKE = Prebuilt(
    select(
        *_TO_CHARGE.c,
        select(_CLAIM.c.id).scalar_subquery().label("claimed_entry"),
        select(func.count()).select_from(_ATTEMPT_STARTED).scalar_subquery().label("started"),
    )
)


@dataclass(frozen=True)
class Taken:
    """A pending attempt this run claimed (a NEW ledger claim, attempt 1) and started."""

    entry_id: int
    invoice_id: str
    ledger_key: str
    amount: int
    currency: str
    stripe_customer_id: str
    payment_method: str
    email: str
    billing_emails: tuple[str, ...]


def take(connection: Any, attempt_id: str, lease: Any) -> Taken | None:
    """None when there was nothing plain to take: the caller's ORM phase decides."""
    row = _TAKE.execute(
        connection, {"b_attempt_id": attempt_id, "b_claim_lease": lease}
    ).one_or_none()
    if row is None or row.claimed_entry is None:
        return None
    return Taken(
        entry_id=row.claimed_entry,
        invoice_id=row.invoice_id,
        ledger_key=row.ledger_key,
        amount=row.amount,
        currency=row.currency,
        stripe_customer_id=row.stripe_customer_id,
        payment_method=row.default_payment_method,
        email=row.email,
        billing_emails=tuple(row.billing_emails or ()),
    )


# --- record a success ----------------------------------------------------------------------

_RECORDING = _locked(_invoices.c.id.label("invoice_id")).where(
    _attempts.c.status == "started",
    _payable(_invoices.c.status),
    # Clearing a delinquent customer's flag reads its other invoices: the ORM phase's work.
    _customers.c.delinquent.is_(False),
)
_RECORDING_CTE = _RECORDING.cte("recording")
_ENTRY = ledger.completion("succeeded", exists(select(_RECORDING_CTE.c.id)))
_HELD = exists(select(_ENTRY.c.id))
_INVOICE_ID = select(_RECORDING_CTE.c.invoice_id).scalar_subquery()
_ATTEMPT_SUCCEEDED = (
    update(_attempts)
    .where(_attempts.c.id == _ATTEMPT_ID, _HELD)
    .values(
        status=literal("succeeded"),
        stripe_payment_intent_id=bindparam("b_intent_id", type_=String()),
        decline_code=null(),
        failure_message=null(),
        finished_at=func.now(),
        updated_at=func.now(),
    )
    .returning(_attempts.c.id)
    .cte("attempt_succeeded")
)
_INVOICE_PAID = (
    update(_invoices)
    .where(_invoices.c.id == _INVOICE_ID, _HELD)
    .values(
        amount_paid=func.least(
            _invoices.c.total, _invoices.c.amount_paid + bindparam("b_amount", type_=BigInteger())
        ),
        status=literal("paid"),
        paid_at=func.now(),
        updated_at=func.now(),
    )
    .returning(_invoices.c.id)
    .cte("invoice_paid")
)
# The receipt, one delivery per recipient, each with the job that sends it. Ids and keys are
# made in Python (as emails.queue_emails makes them) and sent as arrays; a delivery whose
# key exists already is left alone, and gets no job.
_RECEIPTS = (
    func.unnest(
        bindparam("b_delivery_ids", type_=ARRAY(String())),
        bindparam("b_email_job_ids", type_=ARRAY(String())),
        bindparam("b_recipients", type_=ARRAY(String())),
        bindparam("b_email_keys", type_=ARRAY(String())),
        bindparam("b_message_ids", type_=ARRAY(String())),
    )
    .table_valued("delivery_id", "job_id", "recipient", "ledger_key", "message_id")
    .render_derived(name="receipt")
)
_DELIVERIES_QUEUED = (
    insert(_deliveries)
    .from_select(
        ["id", "kind", "invoice_id", "occasion", "recipient", "ledger_key", "message_id"],
        select(
            _RECEIPTS.c.delivery_id,
            literal(RECEIPT),
            _INVOICE_ID,
            _ATTEMPT_ID,
            _RECEIPTS.c.recipient,
            _RECEIPTS.c.ledger_key,
            _RECEIPTS.c.message_id,
        ).where(_HELD),
        # Server defaults only: the model's Python ones would each be a bind named after
        # its column, once per insert, which one statement cannot hold twice.
        include_defaults=False,
    )
    .on_conflict_do_nothing(index_elements=["ledger_key"])
    .returning(_deliveries.c.id)
    .cte("receipts_queued")
)


def _job_values(job_id: Any, name: str, argument: str, value: Any) -> list[Any]:
    """A recorded job's row, as outbox.record_job writes it, with one argument."""
    return outbox.recorded_job_values(
        job_id,
        literal(name),
        literal(jobs.queue_for(name)),
        func.jsonb_build_object(literal(argument), value, type_=JSONB),
    )


_EMAIL_JOBS = (
    insert(_jobs)
    .from_select(
        outbox.RECORDED_JOB_COLUMNS,
        select(
            *_job_values(
                _RECEIPTS.c.job_id, jobs.SEND_EMAIL, "delivery_id", _DELIVERIES_QUEUED.c.id
            )
        ).select_from(
            _DELIVERIES_QUEUED.join(_RECEIPTS, _RECEIPTS.c.delivery_id == _DELIVERIES_QUEUED.c.id)
        ),
        include_defaults=False,
    )
    .returning(_jobs.c.id)
    .cte("email_jobs")
)
# The document now shows the invoice paid.
_RENDER_JOB = (
    insert(_jobs)
    .from_select(
        outbox.RECORDED_JOB_COLUMNS,
        select(
            *_job_values(
                bindparam("b_render_job_id", type_=String()),
                jobs.RENDER_INVOICE_PDF,
                "invoice_id",
                _INVOICE_ID,
            )
        ).where(_HELD),
        include_defaults=False,
    )
    .returning(_jobs.c.id)
    .cte("render_job")
)
_JOB_SUCCEEDED = outbox.running_job_success(_HELD)


def _count(cte: Any) -> Any:
    return select(func.count()).select_from(cte).scalar_subquery()


_RECORD_SUCCESS = Prebuilt(
    select(
        _count(_ENTRY).label("entries"),
        _count(_ATTEMPT_SUCCEEDED).label("attempts"),
        _count(_INVOICE_PAID).label("invoices"),
        select(func.array_agg(_EMAIL_JOBS.c.id)).scalar_subquery().label("email_jobs"),
        _count(_RENDER_JOB).label("render_jobs"),
        _count(_JOB_SUCCEEDED).label("jobs"),
    )
)


@dataclass(frozen=True)
class Recorded:
    """A success recorded in full; the jobs it recorded are to be published now."""

    jobs: list[tuple[str, str]]  # (job id, job name)


def record_success(
    connection: Any,
    attempt_id: str,
    taken: Taken,
    intent_id: str,
    amount: int,
    *,
    receipts: list[dict[str, str]],
    render_job_id: str,
    request_id: str | None,
    job_lease: Any,
) -> Recorded | None:
    """None when nothing was recorded (the claim was lost, or the case is not plain): the
    caller records through the ORM phase, which sorts out which."""
    params: dict[str, Any] = {
        "b_attempt_id": attempt_id,
        "b_entry_id": taken.entry_id,
        "b_attempt": 1,  # a NEW claim's fencing token
        "b_outcome": {"status": "succeeded", "payment_intent": intent_id},
        "b_intent_id": intent_id,
        "b_amount": amount,
        "b_delivery_ids": [r["id"] for r in receipts],
        "b_email_job_ids": [r["job_id"] for r in receipts],
        "b_recipients": [r["recipient"] for r in receipts],
        "b_email_keys": [r["ledger_key"] for r in receipts],
        "b_message_ids": [r["message_id"] for r in receipts],
        "b_render_job_id": render_job_id,
        "b_request_id": request_id,
        "b_job_lease": job_lease,
        **outbox.running_job_params(),
    }
    row = _RECORD_SUCCESS.execute(connection, params).one()
    if not row.entries:
        return None
    if (row.attempts, row.invoices, row.render_jobs) != (1, 1, 1):
        # Cannot be: each is guarded on the entry alone, and the entry on the locked rows.
        log.error("charge.partly_recorded", attempt_id=attempt_id, row=row._asdict())
    recorded = [(job_id, jobs.SEND_EMAIL) for job_id in row.email_jobs or ()]
    recorded.append((render_job_id, jobs.RENDER_INVOICE_PDF))
    return Recorded(recorded)
