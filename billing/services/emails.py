"""Customer emails: recorded with the event that calls for them, sent once on the mail queue.

Each (kind, invoice, occasion, recipient) is one `EmailDelivery` row with a unique ledger
key, recorded in the same transaction as the event, so an event recorded twice (a webhook
and the charge job, say) asks for one email. Sending claims that key in the ledger first,
so a redelivered task does not send again. SMTP cannot be asked afterwards whether it took
a message, so a worker killed between the server's "250 OK" and our commit is the one case
where a message may go out twice; it then carries the same Message-ID (derived from the
ledger key), which lets mail clients fold the two into one.

What each kind shows, attaches and when it may be resent is declared in
billing.notifications.kinds."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from babel.dates import format_date
from flask_mail import Message
from sqlalchemy import (
    CTE,
    Connection,
    Select,
    bindparam,
    case,
    exists,
    false,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from billing import jobs
from billing.adapters.mailer import MailRejected, MailTransientError
from billing.adapters.storage import content_in_sql
from billing.domain import parties
from billing.domain.money import format_money
from billing.extensions import db
from billing.ids import new_id
from billing.logging import get_logger
from billing.metrics import EMAILS, count_on_commit
from billing.models import Customer, EmailDelivery, Invoice, InvoiceDocument
from billing.notifications.compose import compose, single_line
from billing.notifications.kinds import KINDS, EmailKind, Facts
from billing.prebuilt import Prebuilt
from billing.services import context, ledger, outbox
from billing.services.errors import NotFound, PermanentJobError, TransientJobError
from billing.services.ledger import Claim
from billing.services.outbox import record_jobs
from billing.services.unit_of_work import transaction

log = get_logger(__name__)

LEDGER_SCOPE = "email.send"
NO_OCCASION = "-"
# Ends the ledger key of an operator's resend, followed by its number.
RESEND_MARK = ":resend-"
# Below a few seconds, a sender slowed by a loaded machine could lose its claim mid-send.
MIN_MAIL_LEASE_SECONDS = 10


def recipients_of(customer: Customer) -> list[str]:
    """The customer's email, then its further billing emails; each address once."""
    return recipients(customer.email, customer.billing_emails)


def recipients(email: str, billing_emails: Sequence[str] | None) -> list[str]:
    """`recipients_of` for a customer read as plain values."""
    seen: set[str] = set()
    addresses: list[str] = []
    for address in [email, *(billing_emails or [])]:
        cleaned = address.strip()
        if cleaned and cleaned.lower() not in seen:
            seen.add(cleaned.lower())
            addresses.append(cleaned)
    return addresses


def _sender_domain() -> str:
    sender = context.settings().mail.get("MAIL_DEFAULT_SENDER") or "billing@localhost"
    address = sender[1] if isinstance(sender, tuple) else str(sender)
    return address.rsplit("@", 1)[-1].strip("> ") or "localhost"


def message_id_for(ledger_key: str) -> str:
    digest = hashlib.sha256(ledger_key.encode()).hexdigest()[:40]
    return f"<{digest}@{_sender_domain()}>"


@dataclass(frozen=True)
class EmailRequest:
    """One email of `kind` about `invoice`, to each of its customer's billing addresses."""

    kind: str
    invoice: Invoice
    occasion: str = NO_OCCASION
    context: dict[str, Any] = field(default_factory=dict)
    resend: int | None = None  # an operator's n-th resend: see queue_email


def queue_email(
    session: Session,
    kind: str,
    invoice: Invoice,
    *,
    occasion: str = NO_OCCASION,
    context_: dict[str, Any] | None = None,
    resend: int | None = None,
) -> list[str]:
    """Record one email per recipient and its send job, in the caller's transaction.
    An email already recorded for the same key is left alone. Returns the new deliveries.

    `resend` (an operator's n-th resend of this email) gives each delivery a key of its
    own, and so a Message-ID of its own: the dedupe that keeps an event from sending twice
    must not swallow a deliberate second message."""
    created = queue_emails(session, [EmailRequest(kind, invoice, occasion, context_ or {}, resend)])
    if created:
        log.info("email.queued", kind=kind, invoice_id=invoice.id, deliveries=created)
    return created


def queue_emails(session: Session, requests: Sequence[EmailRequest]) -> list[str]:
    """`queue_email` for many at once (a dunning page's reminders): one insert of every
    delivery, one of the new ones' jobs. Returns the new deliveries."""
    rows = [
        {
            **delivery,
            "kind": request.kind,
            "invoice_id": request.invoice.id,
            "occasion": request.occasion,
            "context": request.context,
        }
        for request in requests
        for delivery in new_deliveries(
            request.kind,
            request.invoice.id,
            request.occasion,
            recipients_of(request.invoice.customer),
            request.resend,
        )
    ]
    if not rows:
        return []
    table = EmailDelivery.__table__
    created = list(
        session.execute(
            insert(table)
            .on_conflict_do_nothing(index_elements=["ledger_key"])
            .returning(table.c.id),
            rows,
        ).scalars()
    )
    record_jobs(session, jobs.SEND_EMAIL, [{"delivery_id": delivery} for delivery in created])
    return created


def new_deliveries(
    kind: str,
    invoice_id: str,
    occasion: str,
    addresses: Sequence[str],
    resend: int | None = None,
) -> list[dict[str, str]]:
    """Each recipient's delivery id, address, ledger key and Message-ID, for an insert."""
    if kind not in KINDS:
        raise ValueError(f"no email kind {kind!r} is declared (billing/notifications/kinds.py)")
    deliveries = []
    for recipient in addresses:
        key = f"{kind}:{invoice_id}:{occasion}:{recipient.lower()}"
        if resend is not None:
            key += f"{RESEND_MARK}{resend}"
        deliveries.append(
            {
                "id": new_id("em"),
                "recipient": recipient,
                "ledger_key": key,
                "message_id": message_id_for(key),
            }
        )
    return deliveries


def emails_of(invoice_id: str) -> list[EmailDelivery]:
    return list(
        db.session.scalars(
            select(EmailDelivery)
            .where(EmailDelivery.invoice_id == invoice_id)
            .order_by(EmailDelivery.created_at, EmailDelivery.id)
        )
    )


def occasion_of(connection: Connection | Session, kind: EmailKind, occasion: str) -> Any:
    """The row `occasion` names in `kind`'s occasion table, as a mapping (None if it has
    no such table, or the row is gone)."""
    if kind.occasion is None:
        return None
    table = db.metadata.tables[kind.occasion]
    return connection.execute(select(table).where(table.c.id == occasion)).mappings().first()


# --- sending ----------------------------------------------------------------------------


def _mail_lease() -> timedelta:
    # Longer than a send can take (connect, then the message, each within the timeout),
    # so a live sender is never taken over; no longer, since an email whose sender died
    # waits this long before another worker may send it.
    return timedelta(
        seconds=max(MIN_MAIL_LEASE_SECONDS, 4 * int(context.settings().mail["MAIL_TIMEOUT"]))
    )


def _date(value: date | datetime | None, locale: str) -> str:
    if value is None:
        return ""
    day = value.date() if isinstance(value, datetime) else value
    return str(format_date(day, format="long", locale=locale))


@dataclass(frozen=True)
class Outgoing:
    """What one send needs of a delivery, its invoice and customer, read in one statement."""

    id: str
    kind: str
    status: str
    recipient: str
    ledger_key: str
    message_id: str
    occasion: str
    context: dict[str, Any]
    invoice_id: str
    number: str | None
    currency: str
    invoice_status: str
    collection_method: str
    total: int
    amount_paid: int
    amount_refunded: int
    finalized_at: datetime | None
    due_date: date | None
    paid_at: datetime | None
    customer_name: str
    locale: str
    # The parties the invoice was issued with (None: a draft, or finalized before these
    # were kept): its emails name them as its document does.
    seller_party: dict[str, Any] | None
    buyer_party: dict[str, Any] | None
    document_key: str | None  # the newest PDF's storage key
    # Its bytes, for a kind that attaches it, when the take read them too (documents
    # stored in PostgreSQL).
    document_content: bytes | None = None


_deliveries = EmailDelivery.__table__
_invoices = Invoice.__table__
_customers = Customer.__table__
_documents = InvoiceDocument.__table__
# The statements every send runs, built once: one join instead of three ORM loads, and no
# statement building per email (its CPU cost more than the round trips).
_NEWEST_DOCUMENT = (
    select(_documents.c.storage_key)
    .where(_documents.c.invoice_id == _invoices.c.id)
    .order_by(_documents.c.version.desc())
    .limit(1)
    .scalar_subquery()
)


def _to_send(delivery_id: Any) -> Select[Any]:
    return (
        select(
            _deliveries.c.id,
            _deliveries.c.kind,
            _deliveries.c.status,
            _deliveries.c.recipient,
            _deliveries.c.ledger_key,
            _deliveries.c.message_id,
            _deliveries.c.occasion,
            _deliveries.c.context,
            _invoices.c.id.label("invoice_id"),
            _invoices.c.number,
            _invoices.c.currency,
            _invoices.c.status.label("invoice_status"),
            _invoices.c.collection_method,
            _invoices.c.total,
            _invoices.c.amount_paid,
            _invoices.c.amount_refunded,
            _invoices.c.finalized_at,
            _invoices.c.due_date,
            _invoices.c.paid_at,
            _customers.c.name.label("customer_name"),
            _customers.c.locale,
            _invoices.c.seller_party,
            _invoices.c.buyer_party,
            _NEWEST_DOCUMENT.label("document_key"),
        )
        .select_from(
            _deliveries.join(_invoices, _invoices.c.id == _deliveries.c.invoice_id).join(
                _customers, _customers.c.id == _invoices.c.customer_id
            )
        )
        .where(_deliveries.c.id == delivery_id)
        # Serializes the senders of one delivery with its failure bookkeeping below.
        .with_for_update(of=_deliveries)
    )


_MARK_SENT = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("b_delivery_id"))
    .values(status="sent", error=None, sent_at=func.now())
)


def _is_any(column: Any, values: Sequence[str]) -> Any:
    # Equalities, not IN: a prebuilt statement takes no expanding list parameter.
    return or_(false(), *(column == value for value in values))


def _take(taken: CTE, *job_columns: Any) -> tuple[Prebuilt, Prebuilt]:
    """Taking a delivery to send, in one statement and so one transaction: lock it, read
    what its message needs, and claim its ledger key, unless it went out already or its
    PDF is still to come. A key claimed before (a crash, a redelivery, an operator's
    resend) comes back unclaimed, for `ledger.claim` to sort out. Two forms: one also
    reading the PDF's bytes, for documents that live in PostgreSQL."""
    needs_pdf = _is_any(
        taken.c.kind, [kind.name for kind in KINDS.values() if kind.attaches_invoice_pdf]
    )
    claim = ledger.new_claim(
        LEDGER_SCOPE,
        taken.c.ledger_key,
        taken.c.id,
        taken.c.status != "sent",
        ~needs_pdf | taken.c.document_key.is_not(None),
    )
    statement = select(
        *job_columns, *taken.c, select(claim.c.id).scalar_subquery().label("claimed_entry")
    )
    if job_columns:  # the job's row, and the delivery's if it has one
        statement = statement.select_from(job_columns[0].table.outerjoin(taken, true()))
    reading_pdf = statement.add_columns(
        case((needs_pdf, content_in_sql(taken.c.document_key))).label("document_content")
    )
    return Prebuilt(statement), Prebuilt(reading_pdf)


_TAKE, _TAKE_READING_PDF = _take(_to_send(bindparam("b_delivery_id")).cte("delivery"))
# The same, starting the job in it too: the job's start and the delivery's claim then
# commit together, one commit and round trip fewer per email. Its delivery is the one
# named in the started job's arguments, so a job that does not start takes nothing.
_STARTED = outbox.start_cte()
_START_AND_TAKE, _START_AND_TAKE_READING_PDF = _take(
    _to_send(select(_STARTED.c.args["delivery_id"].astext).scalar_subquery()).cte("delivery"),
    *outbox.started_columns(_STARTED),
)


# Recording the send, in one statement and so one transaction without BEGIN or COMMIT:
# the ledger's outcome, the delivery's status and the job's end, the latter two only if
# this attempt still held the ledger entry.
_ENTRY_SENT = ledger.completion("succeeded")
_STILL_HELD = exists(select(_ENTRY_SENT.c.id))
_DELIVERY_SENT = (
    _MARK_SENT.where(_STILL_HELD)
    .values(attempts=_deliveries.c.attempts + 1)
    .returning(_deliveries.c.id)
    .cte("delivery_sent")
)
_JOB_SUCCEEDED = outbox.running_job_success(_STILL_HELD)
_RECORD_SENT = Prebuilt(
    select(
        *(
            select(func.count()).select_from(cte).scalar_subquery().label(name)
            for name, cte in (
                ("entries", _ENTRY_SENT),
                ("deliveries", _DELIVERY_SENT),
                ("jobs", _JOB_SUCCEEDED),
            )
        )
    )
)


def _buyer_name(mail: Outgoing) -> str:
    return str(parties.shown(mail.buyer_party, {"name": mail.customer_name}).get("name") or "")


def _view(mail: Outgoing, kind: EmailKind, occasion: Mapping[str, Any] | None) -> dict[str, Any]:
    """The invoice's fields every email shows, and those its kind adds."""
    settings = context.settings()
    locale = mail.locale or "en_US"
    seller = parties.shown(mail.seller_party, parties.configured_seller(settings))

    def money(amount: int) -> str:
        return format_money(amount, mail.currency, locale)

    def day(value: date | datetime | None) -> str:
        return _date(value, locale)

    view: dict[str, Any] = {
        "seller_name": seller.get("name") or "",
        "seller_email": seller.get("email"),
        "portal_url": settings.customer_portal_url,
        "payment_instructions": settings.seller_payment_instructions,
        "customer_name": _buyer_name(mail),
        "invoice_number": mail.number or mail.invoice_id,
        "status": mail.invoice_status,
        "collection_method": mail.collection_method,
        "total": money(mail.total),
        "amount_paid": money(mail.amount_paid),
        "amount_due": money(max(mail.total - mail.amount_paid, 0)),
        "amount_refunded": money(mail.amount_refunded),
        "issue_date": day(mail.finalized_at),
        "due_date": day(mail.due_date),
        "paid_date": day(mail.paid_at),
    }
    facts = Facts(
        occasion=occasion,
        context=mail.context or {},
        due_date=mail.due_date,
        portal_url=settings.customer_portal_url,
        money=money,
        date=day,
    )
    return {**view, **kind.view(facts)}


def build_message(session: Session, mail: Outgoing) -> Message:
    kind = KINDS[mail.kind]
    occasion = occasion_of(session, kind, mail.occasion)
    composed = compose(kind.template, _view(mail, kind, occasion))
    # The display name is the customer's own text: folded to one line, it can never end
    # the To header and start another, whatever the database holds.
    message = Message(
        subject=composed.subject,
        recipients=[(single_line(_buyer_name(mail)), mail.recipient)],
        body=composed.text,
        html=composed.html,
        extra_headers={"Auto-Submitted": "auto-generated"},
    )
    message.msgId = mail.message_id
    if kind.attaches_invoice_pdf:
        if mail.document_key is None:
            raise TransientJobError(f"invoice {mail.invoice_id} has no PDF yet", retry_after=10)
        content = mail.document_content
        if content is None:  # not read with the take: stored elsewhere (S3)
            content = context.document_storage().get(mail.document_key)
        message.attach(
            filename=f"invoice-{mail.number or mail.invoice_id}.pdf",
            content_type="application/pdf",
            data=bytes(content),
        )
    return message


@dataclass(frozen=True)
class Taken:
    """A take's answer: the delivery (None when there is no such delivery) and the ledger
    entry it claimed (None when its key was claimed before, or nothing was claimed)."""

    mail: Outgoing | None
    new_entry: int | None


_JOB_COLUMNS = tuple(column.name for column in outbox.started_columns(_STARTED))


def _taken(row: Any) -> Taken:
    fields = row._asdict()
    for column in _JOB_COLUMNS if "args" in fields else ():
        del fields[column]
    new_entry = fields.pop("claimed_entry")
    return Taken(Outgoing(**fields) if fields["id"] is not None else None, new_entry)


def start_sending(
    job_id: str, *, worker: str | None = None
) -> tuple[outbox.StartedJob | None, dict[str, Any]]:
    """The mail job's start and its delivery's take, in one statement."""
    in_database = context.document_storage().in_database
    job, row = outbox.start_job_with(
        job_id,
        _START_AND_TAKE_READING_PDF if in_database else _START_AND_TAKE,
        {"b_claim_lease": _mail_lease()},
        worker=worker,
    )
    if job is None:
        return None, {}
    return job, {**job.args, "taken": _taken(row)}


def send_email(delivery_id: str, taken: Taken | None = None) -> str:
    """The `mail.send_email` job: send one delivery, at most once. `taken` is its take
    when the job's start made it already (start_sending)."""
    if taken is None:
        in_database = context.document_storage().in_database
        with outbox.single_statements() as connection:
            row = (
                (_TAKE_READING_PDF if in_database else _TAKE)
                .execute(connection, {"b_delivery_id": delivery_id, "b_claim_lease": _mail_lease()})
                .one_or_none()
            )
        taken = _taken(row) if row is not None else Taken(None, None)
    mail, new_entry = taken.mail, taken.new_entry
    if mail is None:
        raise PermanentJobError(f"no email delivery {delivery_id}")
    if mail.status == "sent":
        EMAILS.labels(kind=mail.kind, outcome="skipped").inc()
        return "sent"
    if KINDS[mail.kind].attaches_invoice_pdf and mail.document_key is None:
        raise TransientJobError(f"invoice {mail.invoice_id} has no PDF yet", retry_after=10)
    if new_entry is not None:
        claimed = ledger.ClaimResult(Claim.NEW, new_entry, 1, "started")
    else:
        with transaction() as session:
            claimed = ledger.claim_in_transaction(
                LEDGER_SCOPE, mail.ledger_key, mail.id, lease=_mail_lease()
            )
            if claimed.claim is Claim.DONE:
                session.execute(_MARK_SENT, {"b_delivery_id": delivery_id})
                count_on_commit(session, EMAILS.labels(kind=mail.kind, outcome="skipped"))
                return "sent"
        if claimed.claim is Claim.RESUMED:
            log.warning("email.resumed_after_crash", delivery_id=delivery_id)
    try:
        with transaction() as session:
            message = build_message(session, mail)
    except BaseException:
        ledger.release(claimed)  # nothing went out: the next attempt may claim afresh
        raise

    try:
        context.mailer().send(message)
    except (MailTransientError, MailRejected) as exc:
        # Not accepted: nothing went out, so the key is free for the next attempt
        # (the job's retry, or an operator's replay after fixing the address).
        ledger.release(claimed)
        permanent = isinstance(exc, MailRejected)
        with transaction() as session:
            failed = session.get(EmailDelivery, delivery_id, with_for_update=True)
            assert failed is not None
            failed.error = str(exc)[:2000]
            failed.attempts += 1
            if permanent:
                failed.status = "failed"
        EMAILS.labels(kind=mail.kind, outcome="rejected" if permanent else "retry").inc()
        if permanent:
            log.error("email.rejected", delivery_id=delivery_id, kind=mail.kind, error=str(exc))
            raise PermanentJobError(f"email to {mail.recipient} refused: {exc}") from exc
        raise TransientJobError(f"email to {mail.recipient} deferred: {exc}") from exc

    with outbox.single_statements() as connection:
        recorded = _RECORD_SENT.execute(
            connection,
            {
                "b_entry_id": claimed.entry_id,
                "b_attempt": claimed.attempt,
                "b_outcome": {"message_id": mail.message_id},
                "b_delivery_id": delivery_id,
                **outbox.running_job_params(),
            },
        ).one()
    if not recorded.entries:
        raise TransientJobError(f"email {delivery_id} was taken over")
    if recorded.jobs:
        outbox.running_job_succeeded()
    EMAILS.labels(kind=mail.kind, outcome="sent").inc()
    log.info("email.sent", delivery_id=delivery_id, kind=mail.kind, message_id=mail.message_id)
    return "sent"


def get_delivery(delivery_id: str) -> EmailDelivery:
    delivery = db.session.get(EmailDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"No such email: '{delivery_id}'", param="id")
    return delivery
