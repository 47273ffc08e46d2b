"""An invoice's dunning facts, read from PostgreSQL, and the domain schedule over them.

Kept apart from `dunning` (the nightly run) because the charge path needs it too (the
payment-failed email names the next retry date), and the run itself starts charges."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any, Protocol

from sqlalchemy import and_, exists, or_, select, true
from sqlalchemy.orm import Session

from billing.dunning.rules import (
    AUTOMATIC,
    SEND_INVOICE,
    DunningFacts,
    DunningPolicy,
    RecordedStep,
    StepAction,
    StepStatus,
    next_retry_date,
    schedule,
)
from billing.extensions import db
from billing.invoicing.rules import InvoiceStatus
from billing.models import CHARGE_IN_FLIGHT, ChargeAttempt, Customer, DunningStepRecord, Invoice
from billing.platform import clock, context


def policy() -> DunningPolicy:
    settings = context.settings()
    return DunningPolicy(
        retry_days=settings.dunning_retry_days, reminder_days=settings.dunning_reminder_days
    )


def in_dunning() -> Any:
    """SQL: an open invoice the nightly run looks at."""
    return and_(
        Invoice.status == "open",
        or_(
            and_(Invoice.collection_method == AUTOMATIC, Invoice.dunning_started_on.is_not(None)),
            and_(Invoice.collection_method == SEND_INVOICE, Invoice.due_date.is_not(None)),
        ),
    )


def facts_query() -> Any:
    """One row per invoice: what the schedule needs, in one statement."""
    last_failed = (
        select(ChargeAttempt.decline_code, ChargeAttempt.payment_method)
        .where(ChargeAttempt.invoice_id == Invoice.id, ChargeAttempt.status == "failed")
        .order_by(ChargeAttempt.created_at.desc(), ChargeAttempt.id.desc())
        .limit(1)
        .lateral("last_failed")
    )
    in_flight = (
        exists()
        .where(ChargeAttempt.invoice_id == Invoice.id, ChargeAttempt.status.in_(CHARGE_IN_FLIGHT))
        .correlate(Invoice)
    )
    return (
        select(
            Invoice.id,
            Invoice.collection_method,
            Invoice.status,
            Invoice.due_date,
            Invoice.dunning_started_on,
            Customer.default_payment_method,
            last_failed.c.decline_code,
            last_failed.c.payment_method,
            in_flight.label("in_flight"),
        )
        .join(Customer, Customer.id == Invoice.customer_id)
        .outerjoin(last_failed, true())
    )


def recorded_steps(
    session: Session, invoice_ids: Sequence[str]
) -> dict[str, dict[str, RecordedStep]]:
    found: dict[str, dict[str, RecordedStep]] = defaultdict(dict)
    if not invoice_ids:
        return found
    rows = session.execute(
        select(
            DunningStepRecord.invoice_id,
            DunningStepRecord.step,
            DunningStepRecord.action,
            DunningStepRecord.status,
            DunningStepRecord.reason,
            DunningStepRecord.taken_on,
        ).where(DunningStepRecord.invoice_id.in_(list(invoice_ids)))
    )
    for invoice_id, step, action, status, reason, taken_on in rows:
        found[invoice_id][step] = RecordedStep(
            StepStatus(status), taken_on, reason, StepAction(action)
        )
    return found


def facts_from_row(row: Any, recorded: dict[str, RecordedStep]) -> DunningFacts:
    return DunningFacts(
        collection_method=row.collection_method,
        status=row.status,
        due_date=row.due_date,
        started_on=row.dunning_started_on,
        last_decline_code=row.decline_code,
        declined_method_still_on_file=row.decline_code is not None
        and row.payment_method == row.default_payment_method,
        attempt_in_flight=bool(row.in_flight),
        recorded=recorded,
    )


def load_facts(session: Session, invoice_ids: Sequence[str]) -> dict[str, DunningFacts]:
    rows = session.execute(facts_query().where(Invoice.id.in_(list(invoice_ids)))).all()
    recorded = recorded_steps(session, [row.id for row in rows])
    return {row.id: facts_from_row(row, recorded.get(row.id, {})) for row in rows}


def payment_failed_context(session: Session, attempt: ChargeAttempt) -> dict[str, Any]:
    """Called as an automatic charge fails: dunning starts on the first failure, and the
    payment-failed email names the next retry, from the same schedule the run follows."""
    invoice = attempt.invoice
    if invoice.collection_method != AUTOMATIC or invoice.status != "open":
        return {}
    today = clock.today()
    if invoice.dunning_started_on is None:
        invoice.dunning_started_on = today
    facts = DunningFacts(
        collection_method=invoice.collection_method,
        status=invoice.status,
        due_date=invoice.due_date,
        started_on=invoice.dunning_started_on,
        last_decline_code=attempt.decline_code,
        declined_method_still_on_file=attempt.payment_method
        == invoice.customer.default_payment_method,
        attempt_in_flight=False,
        recorded=recorded_steps(session, [invoice.id]).get(invoice.id, {}),
    )
    retry_on: date | None = next_retry_date(facts, policy(), today)
    return {"next_retry_date": retry_on.isoformat()} if retry_on else {}


class DunnedInvoice(Protocol):
    """What `next_payment_attempts` reads of an invoice (a model or a row read for show)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def collection_method(self) -> str: ...
    @property
    def dunning_started_on(self) -> date | None: ...


def next_payment_attempts(invoices: Sequence[DunnedInvoice]) -> dict[str, datetime]:
    """When dunning will next try to charge each of these invoices, by id: the first planned
    retry not yet taken, at the nightly run's hour (UTC). Absent outside dunning (not open,
    not charged automatically, or no charge failed yet), and for a retry held by a hard
    decline. Two statements for any number of invoices, none when none is in dunning."""
    in_dunning = [
        invoice.id
        for invoice in invoices
        if invoice.status == InvoiceStatus.OPEN.value
        and invoice.collection_method == AUTOMATIC
        and invoice.dunning_started_on is not None
    ]
    if not in_dunning:
        return {}
    found: dict[str, datetime] = {}
    today = clock.today()
    rules = policy()
    for invoice_id, facts in load_facts(db.session(), in_dunning).items():
        for step in schedule(facts, rules, today):
            # Steps taken come back DONE; a retry due today but not yet taken is still PLANNED.
            if (
                step.action is StepAction.RETRY_CHARGE
                and step.status is StepStatus.PLANNED
                and step.on >= today
            ):
                run_at = datetime.combine(step.on, time(context.settings().dunning_hour), UTC)
                found[invoice_id] = max(run_at, clock.now())
                break
    return found
