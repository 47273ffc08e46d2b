"""Dunning: the nightly run that retries failed charges, reminds, and finally gives up.

The run walks open invoices in id order (keyset pagination, a page at a time, nothing
else held in memory), asks the domain schedule which steps are due, and takes them in
one transaction per page: the page's invoices with due steps are locked (in id order),
their facts read again under the lock, and each step's ledger entry (scope
`dunning.step`, key `{invoice}:{step}`) is inserted in that same transaction as the
step's effect (a charge attempt and its job, an email, the uncollectible mark) and its
`dunning_steps` row. A second run, at once or later, finds the entry and does nothing;
two at once wait on the invoice locks, then find the entries. The advisory lock makes
the doubled run cheap as well as harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, selectinload

from billing.charging import charges
from billing.charging import rules as charge_rules
from billing.charging.declines import is_hard_decline
from billing.charging.rules import ChargeStatus
from billing.domain.ledger import LedgerState
from billing.dunning.rules import (
    AUTOMATIC,
    DunningFacts,
    DunningStep,
    StepAction,
    StepStatus,
    schedule,
)
from billing.dunning.schedule import (
    facts_from_row,
    facts_query,
    in_dunning,
    load_facts,
    policy,
    recorded_steps,
)
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.invoicing.invoices import record_uncollectible
from billing.invoicing.rules import InvoiceStatus
from billing.models import ChargeAttempt, DunningStepRecord, Invoice, LedgerEntry
from billing.notifications import emails
from billing.platform import clock, locks
from billing.platform.errors import NotFound
from billing.platform.logging import get_logger
from billing.platform.unit_of_work import transaction

log = get_logger(__name__)

LEDGER_SCOPE = "dunning.step"
LOCK_NAME = "dunning"
# A page: big enough that a night of 100,000 open invoices is a few hundred round trips,
# small enough that a page holds its invoices' locks only briefly, so a payment or an
# API change on one of them never waits long behind the run.
PAGE_SIZE = 500


@dataclass
class DunningRun:
    invoices_seen: int = 0
    pages: int = 0
    steps: Counter[str] = field(default_factory=Counter)


def ledger_key(invoice_id: str, step: str) -> str:
    return f"{invoice_id}:{step}"


def run_dunning(today: date | None = None, *, page_size: int = PAGE_SIZE) -> DunningRun | None:
    """The nightly job: None when another run holds the lock."""
    with locks.exclusive(LOCK_NAME) as taken:
        if not taken:
            return None
        return run_pages(today or clock.today(), page_size=page_size)


def run_pages(today: date, *, page_size: int = PAGE_SIZE) -> DunningRun:
    """Every page of open invoices, in id order. Safe to run concurrently with itself."""
    run = DunningRun()
    session = db.session()
    rules = policy()
    last_id = ""
    while True:
        rows = session.execute(
            facts_query()
            .where(in_dunning(), Invoice.id > last_id)
            .order_by(Invoice.id)
            .limit(page_size)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        recorded = recorded_steps(session, [row.id for row in rows])
        session.commit()  # end the read's snapshot: nothing is held between pages
        due = [
            row.id
            for row in rows
            if any(
                step.due
                for step in schedule(facts_from_row(row, recorded.get(row.id, {})), rules, today)
            )
        ]
        run.invoices_seen += len(rows)
        run.pages += 1
        if due:
            run.steps.update(_take_steps(due, today))
        session.expunge_all()
        if len(rows) < page_size:
            break
    log.info("dunning.run_finished", invoices=run.invoices_seen, steps=dict(run.steps))
    return run


def _take_steps(invoice_ids: Sequence[str], today: date) -> Counter[str]:
    taken: Counter[str] = Counter()
    rules = policy()
    with transaction() as session:
        # Locked in id order (as every page is), then read again: a charge, payment or
        # another run may have changed them since the page was read.
        session.execute(
            select(Invoice.id)
            .where(Invoice.id.in_(list(invoice_ids)))
            .order_by(Invoice.id)
            .with_for_update()
        ).all()
        facts = load_facts(session, invoice_ids)
        plans = {
            invoice_id: [step for step in schedule(f, rules, today) if step.due]
            for invoice_id, f in facts.items()
            if f.status == InvoiceStatus.OPEN
        }
        wanted = [(i, step) for i, steps in plans.items() for step in steps]
        if not wanted:
            return taken
        claimed = _claim(session, wanted, today)
        invoices = {
            invoice.id: invoice
            for invoice in session.scalars(
                select(Invoice)
                .where(Invoice.id.in_(list({i for i, _ in wanted})))
                .options(selectinload(Invoice.customer))
                .execution_options(populate_existing=True)
            )
        }
        # Each kind of effect of the whole page is one multi-row insert: a page is a
        # handful of statements however many steps it takes.
        records: list[dict[str, Any]] = []
        retries: list[tuple[dict[str, Any], Invoice]] = []
        reminders: list[emails.EmailRequest] = []
        overdue: dict[str, str] = {}
        steps_taken: list[tuple[str, str]] = []
        with session.no_autoflush:
            for invoice_id, step in wanted:
                if ledger_key(invoice_id, step.key) not in claimed:
                    continue  # taken by another run
                invoice = invoices[invoice_id]
                record = _record_of(invoice, step, today)
                records.append(record)
                taken[step.action.value if step.status is StepStatus.PLANNED else "skipped"] += 1
                if facts[invoice_id].first_step_past_due(step):
                    overdue[invoice_id] = invoice.customer_id
                if step.status is StepStatus.SKIPPED:
                    continue
                steps_taken.append((invoice_id, invoice.customer_id))
                if step.action is StepAction.RETRY_CHARGE:
                    retries.append((record, invoice))
                elif step.action is StepAction.SEND_REMINDER:
                    reminders.append(
                        emails.EmailRequest(
                            "payment_reminder",
                            invoice,
                            f"dunning:{step.key}",
                            {"as_of": str(today)},
                        )
                    )
                elif step.action is StepAction.FINAL_NOTICE:
                    reminders.append(
                        emails.EmailRequest("final_notice", invoice, f"dunning:{step.key}")
                    )
                elif step.action is StepAction.MARK_UNCOLLECTIBLE:
                    _mark_uncollectible(invoice)
        # At most one retry per invoice is due on a night (the schedule spaces them).
        attempts = charges.start_attempts(
            session,
            [(invoice.id, invoice.amount_due, invoice.currency) for _, invoice in retries],
            source="dunning",
        )
        for record, invoice in retries:
            record["charge_attempt_id"] = attempts[invoice.id][0]
        emails.queue_emails(session, reminders)
        if records:
            session.execute(insert(DunningStepRecord.__table__), records)
        events.record_many(session, EventType.INVOICE_OVERDUE, list(overdue.items()))
        events.record_many(session, EventType.DUNNING_STEP_TAKEN, steps_taken)
    return taken


def _record_of(invoice: Invoice, step: DunningStep, today: date) -> dict[str, Any]:
    return {
        "invoice_id": invoice.id,
        "step": step.key,
        "action": step.action.value,
        "status": step.status.value if step.status is StepStatus.SKIPPED else "done",
        "reason": step.reason,
        "taken_on": today,
        "charge_attempt_id": None,
    }


def _claim(session: Session, wanted: list[tuple[str, DunningStep]], today: date) -> set[str]:
    """Insert the steps' ledger entries as done, in the caller's transaction: the ones
    inserted are ours to take; a conflict means another run took that step."""
    rows = [
        {
            "scope": LEDGER_SCOPE,
            "key": ledger_key(invoice_id, step.key),
            "fingerprint": invoice_id,
            "state": LedgerState.SUCCEEDED.value,
            "attempt": 1,
            "outcome": {"action": step.action.value, "status": step.status.value, "on": str(today)},
        }
        for invoice_id, step in wanted
    ]
    table = LedgerEntry.__table__
    # One compiled statement whatever the page's size (sent as a multi-row VALUES).
    return set(
        session.execute(
            insert(table)
            .on_conflict_do_nothing(constraint="uq_ledger_entries_scope_key")
            .returning(table.c.key),
            rows,
        ).scalars()
    )


def _mark_uncollectible(invoice: Invoice) -> None:
    # The invoice use case's own change (and its state machine's rule), in this page's
    # transaction: the invoice is locked already.
    record_uncollectible(invoice)
    invoice.customer.delinquent = True
    log.info("dunning.marked_uncollectible", invoice_id=invoice.id)


# --- a new payment method -----------------------------------------------------------------


def retry_after_new_payment_method(customer_id: str, payment_method: str) -> list[str]:
    """The customer set a new payment method: every open invoice of theirs in dunning whose
    last charge was hard-declined (on another method) is retried at once. Its own
    transaction, after the customer's: invoices are always locked before customers."""
    started: list[str] = []
    with transaction() as session:
        invoices = list(
            session.scalars(
                select(Invoice)
                .where(
                    Invoice.customer_id == customer_id,
                    Invoice.status == InvoiceStatus.OPEN.value,
                    Invoice.collection_method == AUTOMATIC,
                    Invoice.dunning_started_on.is_not(None),
                )
                .order_by(Invoice.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        for invoice in invoices:
            if not _held_by_hard_decline(session, invoice.id, payment_method):
                continue
            step = f"new_payment_method:{payment_method}"[:64]
            wanted = DunningStep(
                step,
                clock.today(),
                StepAction.RETRY_CHARGE,
                "a new payment method was set after a hard decline",
                StepStatus.PLANNED,
                True,
            )
            if not _claim(session, [(invoice.id, wanted)], clock.today()):
                continue
            attempt, _ = charges.start_attempt(session, invoice, source="dunning")
            session.add(
                DunningStepRecord(
                    invoice_id=invoice.id,
                    step=step,
                    action=StepAction.RETRY_CHARGE.value,
                    status="done",
                    reason=wanted.reason,
                    taken_on=clock.today(),
                    charge_attempt_id=attempt.id,
                )
            )
            started.append(attempt.id)
    if started:
        log.info(
            "dunning.retry_after_new_payment_method", customer_id=customer_id, attempts=started
        )
    return started


def _held_by_hard_decline(session: Session, invoice_id: str, payment_method: str) -> bool:
    attempts = session.execute(
        select(ChargeAttempt.status, ChargeAttempt.decline_code, ChargeAttempt.payment_method)
        .where(ChargeAttempt.invoice_id == invoice_id)
        .order_by(ChargeAttempt.created_at.desc(), ChargeAttempt.id.desc())
    ).all()
    if any(a.status in charge_rules.IN_FLIGHT for a in attempts):
        return False
    last_failed = next((a for a in attempts if a.status == ChargeStatus.FAILED), None)
    return (
        last_failed is not None
        and is_hard_decline(last_failed.decline_code)
        and last_failed.payment_method != payment_method
    )


# --- preview -------------------------------------------------------------------------------


def preview(invoice_id: str, *, customer_scope: str | None = None) -> list[DunningStep]:
    """Every step of the invoice's dunning, past and planned, from the same schedule."""
    session = db.session()
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or customer_scope not in (None, invoice.customer_id):
        raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
    facts = load_facts(session, [invoice_id])[invoice_id]
    return schedule(facts, policy(), clock.today())


def plan_of(invoice: Invoice, attempts: Sequence[ChargeAttempt]) -> list[DunningStep]:
    """`preview` of an invoice already loaded with its customer and its attempts (newest
    first), as the hosted page has them: the same facts and schedule, with one statement
    (its recorded steps) instead of two."""
    last_failed = next((a for a in attempts if a.status == ChargeStatus.FAILED), None)
    facts = DunningFacts(
        collection_method=invoice.collection_method,
        status=invoice.status,
        due_date=invoice.due_date,
        started_on=invoice.dunning_started_on,
        last_decline_code=last_failed.decline_code if last_failed else None,
        declined_method_still_on_file=last_failed is not None
        and last_failed.decline_code is not None
        and last_failed.payment_method == invoice.customer.default_payment_method,
        attempt_in_flight=any(a.status in charge_rules.IN_FLIGHT for a in attempts),
        recorded=recorded_steps(db.session(), [invoice.id]).get(invoice.id, {}),
    )
    return schedule(facts, policy(), clock.today())
