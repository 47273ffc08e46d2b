"""What the operators' commands do beyond reading: the outbox's state, re-sending an
invoice's email, re-rendering its PDF, and waiting for the jobs these record."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from billing.extensions import db
from billing.models import EmailDelivery, Invoice, InvoiceDocument, OutboxJob
from billing.notifications.emails import RESEND_MARK, occasion_of, queue_email
from billing.notifications.kinds import KINDS, resend_refusal
from billing.operations.queues import database_now
from billing.platform import context, jobs
from billing.platform.errors import Conflict, InvalidRequest, NotFound
from billing.platform.jobs import QUEUES
from billing.platform.logging import get_logger
from billing.platform.outbox import REPLAYABLE, UNFINISHED, record_job, recorded_jobs
from billing.platform.unit_of_work import transaction

log = get_logger(__name__)

# --- the outbox --------------------------------------------------------------------------

STATES_SHOWN = (*UNFINISHED, *REPLAYABLE)


@dataclass(frozen=True)
class OldestJob:
    id: str
    name: str
    state: str
    age_seconds: float


@dataclass(frozen=True)
class OutboxStatus:
    counts: dict[str, dict[str, int]]  # queue -> state -> jobs (unfinished, dead, failed)
    oldest_unfinished: OldestJob | None
    lease_expired: int  # unfinished jobs whose lease ran out: the sweeper's next pass
    oldest_expired_seconds: float | None  # how long ago the oldest of those leases ran out
    sweeper_grace_seconds: float

    @property
    def dead_lettered(self) -> int:
        return sum(states.get("dead_lettered", 0) for states in self.counts.values())

    @property
    def failed(self) -> int:
        return sum(states.get("failed", 0) for states in self.counts.values())

    @property
    def sweeper_behind(self) -> bool:
        """Leases ran out long enough ago that the sweeper should have sent them again:
        beat (which runs it) is down, or the sweep keeps failing."""
        return (self.oldest_expired_seconds or 0) > self.sweeper_grace_seconds


def sweeper_grace_seconds() -> float:
    # Three sweeps, and at least a minute: a pass may find more than one batch to send.
    return float(max(60, 3 * context.settings().outbox_sweep_interval_seconds))


def outbox_status() -> OutboxStatus:
    session = db.session()
    now = database_now()
    counts: dict[str, dict[str, int]] = {queue: {} for queue in QUEUES}
    for queue, state, jobs_ in session.execute(
        select(OutboxJob.queue, OutboxJob.state, func.count())
        .where(OutboxJob.state.in_(STATES_SHOWN))
        .group_by(OutboxJob.queue, OutboxJob.state)
    ):
        counts.setdefault(queue, {})[state] = jobs_
    oldest = session.execute(
        select(OutboxJob.id, OutboxJob.name, OutboxJob.state, OutboxJob.created_at)
        .where(OutboxJob.state.in_(UNFINISHED))
        .order_by(OutboxJob.created_at)
        .limit(1)
    ).first()
    expired, oldest_expiry = session.execute(
        select(func.count(), func.min(OutboxJob.lease_expires_at)).where(
            OutboxJob.state.in_(UNFINISHED), OutboxJob.lease_expires_at < now
        )
    ).one()
    session.rollback()
    return OutboxStatus(
        counts=counts,
        oldest_unfinished=(
            OldestJob(
                oldest.id, oldest.name, oldest.state, (now - oldest.created_at).total_seconds()
            )
            if oldest is not None
            else None
        ),
        lease_expired=int(expired),
        oldest_expired_seconds=(
            (now - oldest_expiry).total_seconds() if oldest_expiry is not None else None
        ),
        sweeper_grace_seconds=sweeper_grace_seconds(),
    )


# --- waiting for recorded jobs ---------------------------------------------------------


def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, str]:
    """Each job's state once all are finished, or when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        states = dict(
            db.session.execute(
                select(OutboxJob.id, OutboxJob.state).where(OutboxJob.id.in_(job_ids))
            ).all()
        )
        db.session.rollback()
        if all(state not in UNFINISHED for state in states.values()):
            return states
        if time.monotonic() >= deadline:
            return states
        time.sleep(0.25)


# --- re-sending an email ------------------------------------------------------------------

_RESEND_NUMBER = re.compile(re.escape(RESEND_MARK) + r"(\d+)$")


class EmailNotResendable(Conflict):
    code = "email_not_resendable"


@dataclass(frozen=True)
class Resend:
    invoice_id: str
    kind: str
    number: int  # the n-th resend of this email
    deliveries: list[str]
    recipients: list[str]
    job_ids: list[str]


def resend_invoice_email(invoice_id: str, kind: str) -> Resend:
    """Send an invoice's email of `kind` again, as the customer's addresses are now: the
    latest one recorded of that kind (its occasion and content), under a new delivery key.
    When it may be sent again is the kind's declaration's to say."""
    declared = KINDS.get(kind)
    if declared is None:
        raise InvalidRequest(f"unknown email kind {kind!r}", param="kind")
    with transaction() as session:
        # Locked: two operators resending at once number their resends one after the other.
        invoice = session.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)
        if invoice is None:
            raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
        refusal = resend_refusal(declared, invoice.status)
        if refusal is not None:
            raise EmailNotResendable(refusal)
        previous = session.scalars(
            select(EmailDelivery)
            .where(EmailDelivery.invoice_id == invoice_id, EmailDelivery.kind == kind)
            .order_by(EmailDelivery.created_at.desc(), EmailDelivery.id.desc())
        ).all()
        if not previous:
            # A kind with the PDF attached may wait for it (the issued email is recorded
            # once the first PDF is stored).
            waits = declared.attaches is not None
            why = " (it waits for the PDF: billing outbox status)" if waits else ""
            raise EmailNotResendable(
                f"no {kind} email was ever recorded for {invoice_id}: nothing to send again{why}"
            )
        latest = previous[0]
        if declared.refuse_resend is not None:
            refusal = declared.refuse_resend(occasion_of(session, declared, latest.occasion))
            if refusal is not None:
                raise EmailNotResendable(refusal)
        number = 1 + max(
            (
                int(match.group(1))
                for delivery in previous
                if delivery.occasion == latest.occasion
                and (match := _RESEND_NUMBER.search(delivery.ledger_key))
            ),
            default=0,
        )
        created = queue_email(
            session,
            kind,
            invoice,
            occasion=latest.occasion,
            context_=dict(latest.context or {}),
            resend=number,
        )
        if not created:
            raise EmailNotResendable(f"{invoice_id}'s customer has no email address")
        sent = session.scalars(
            select(EmailDelivery).where(EmailDelivery.id.in_(created)).order_by(EmailDelivery.id)
        ).all()
        job_ids = [job_id for job_id, name, _ in recorded_jobs(session) if name == jobs.SEND_EMAIL]
        recipients = [delivery.recipient for delivery in sent]
    log.info("email.resent", invoice_id=invoice_id, kind=kind, resend=number, deliveries=created)
    return Resend(invoice_id, kind, number, created, recipients, job_ids)


def delivery_states(delivery_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Each delivery's status and last error."""
    rows = db.session.execute(
        select(EmailDelivery.id, EmailDelivery.status, EmailDelivery.error).where(
            EmailDelivery.id.in_(delivery_ids)
        )
    ).all()
    db.session.rollback()
    return {row.id: (row.status, row.error) for row in rows}


# --- re-rendering PDFs --------------------------------------------------------------------


@dataclass(frozen=True)
class Rerender:
    invoice_id: str
    job_id: str
    latest_version: int  # before the rerender; 0 if none


def invoices_finalized_since(since: datetime, limit: int) -> list[str]:
    return list(
        db.session.scalars(
            select(Invoice.id)
            .where(Invoice.status != "draft", Invoice.finalized_at >= since)
            .order_by(Invoice.finalized_at, Invoice.id)
            .limit(limit)
        )
    )


def rerender_invoices(invoice_ids: list[str]) -> list[Rerender]:
    """Record a forced render of each invoice (on the pdf queue): rendered even when nothing
    the document shows has changed, stored as a new version when its bytes differ."""
    if not invoice_ids:
        return []
    with transaction() as session:
        found = {
            invoice.id: invoice
            for invoice in session.scalars(select(Invoice).where(Invoice.id.in_(invoice_ids)))
        }
        for invoice_id in invoice_ids:
            invoice = found.get(invoice_id)
            if invoice is None:
                raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
            if invoice.status == "draft":
                raise Conflict(f"{invoice_id} is a draft: it has no document until finalized")
        versions = latest_versions(invoice_ids)
        requested = [
            Rerender(
                invoice_id,
                record_job(session, jobs.RENDER_INVOICE_PDF, invoice_id=invoice_id, force=True),
                versions.get(invoice_id, 0),
            )
            for invoice_id in dict.fromkeys(invoice_ids)
        ]
    log.info("pdf.rerender_requested", invoices=len(requested))
    return requested


def latest_versions(invoice_ids: list[str]) -> dict[str, int]:
    return {
        invoice_id: int(version)
        for invoice_id, version in db.session.execute(
            select(InvoiceDocument.invoice_id, func.max(InvoiceDocument.version))
            .where(InvoiceDocument.invoice_id.in_(invoice_ids))
            .group_by(InvoiceDocument.invoice_id)
        )
    }
