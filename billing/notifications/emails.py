"""Customer emails: recorded with the event that calls for them, sent once on the mail queue.

Each (kind, invoice, occasion, recipient) is one `EmailDelivery` row (or (kind,
subscription, ...) for an email about a subscription alone, its trial's end) with a unique ledger
key, recorded in the same transaction as the event, so an event recorded twice (a webhook
and the charge job, say) asks for one email. Sending claims that key in the ledger first,
so a redelivered task does not send again. SMTP cannot be asked afterwards whether it took
a message, so a worker killed between the server's "250 OK" and our commit is the one case
where a message may go out twice; it then carries the same Message-ID (derived from the
ledger key), which lets mail clients fold the two into one.

What each kind shows, attaches and when it may be resent is declared in
billing.notifications.kinds; how a delivery's status may change, in billing.notifications.rules."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from babel.dates import format_date
from flask_mail import Message
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    String,
    bindparam,
    case,
    cast,
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

from billing.adapters.mailer import MailRejected, MailTransientError
from billing.adapters.storage import content_in_sql
from billing.domain import parties
from billing.domain.money import format_money
from billing.einvoices.embedded import embedded_xml
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.hosted import urls
from billing.models import (
    CreditNoteDocument,
    Customer,
    EmailDelivery,
    Invoice,
    InvoiceDocument,
    Price,
    Subscription,
)
from billing.notifications.compose import compose, single_line
from billing.notifications.kinds import KINDS, Attachment, EmailKind, Facts
from billing.notifications.rules import DeliveryStatus, SendOutcome, after_try, may_be_sent
from billing.platform import context, jobs, ledger, outbox
from billing.platform.errors import NotFound, PermanentJobError, TransientJobError
from billing.platform.ids import new_id
from billing.platform.ledger import Claim, ClaimResult
from billing.platform.logging import get_logger
from billing.platform.metrics import EMAILS
from billing.platform.outbox import record_jobs
from billing.platform.prebuilt import Prebuilt

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
    return _insert_deliveries(session, rows)


def queue_subscription_email(
    session: Session, kind: str, subscription: Subscription, *, occasion: str
) -> list[str]:
    """`queue_email` for an email about a subscription alone, with no invoice (its trial
    about to end): keyed by the subscription instead. Returns the new deliveries."""
    rows: list[dict[str, Any]] = [
        {
            **delivery,
            "kind": kind,
            "invoice_id": None,
            "subscription_id": subscription.id,
            "occasion": occasion,
            "context": {},
        }
        for delivery in new_deliveries(
            kind, subscription.id, occasion, recipients_of(subscription.customer)
        )
    ]
    created = _insert_deliveries(session, rows)
    if created:
        log.info("email.queued", kind=kind, subscription_id=subscription.id, deliveries=created)
    return created


def _insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> list[str]:
    """The rows not recorded yet (by ledger key), each with its send job."""
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
    invoice_id: str,  # or the subscription's id, for an email about one alone
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
#
# Every send goes one way, run by its job or called directly, a first try or one taking
# over from a sender that died: three statements, each committed on its own and compiled
# once (billing.platform.prebuilt), since building and committing statements is most of what a
# send costs besides SMTP. The take (the job's start, the delivery locked and read with
# its PDF, the ledger claim), the SMTP send, then the record of how it ended (sent: the
# ledger's outcome, the delivery's status and the job's end; not sent: the claim released
# and the delivery's error).


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
    """What one send needs of a delivery, its invoice (or subscription) and customer, read
    in one statement. An email about a subscription alone has no invoice: its invoice's
    fields are then None, and the subscription's say what it is about."""

    id: str
    kind: str
    status: str
    recipient: str
    tries: int  # the delivery's attempts so far
    created_at: datetime
    ledger_key: str
    message_id: str
    occasion: str
    context: dict[str, Any]
    invoice_id: str | None
    number: str | None
    currency: str  # the invoice's, or the subscription's price's
    invoice_status: str | None
    collection_method: str | None
    total: int | None
    discount: int | None
    amount_paid: int | None
    amount_refunded: int | None
    balance_applied: int | None
    amount_credited: int | None
    finalized_at: datetime | None
    due_date: date | None
    paid_at: datetime | None
    # When it was paid, voided or written off: how long its hosted page's link lasts.
    closed_at: datetime | None
    subscription_id: str | None
    trial_end: datetime | None
    product: str | None
    unit_amount: int | None
    quantity: int | None
    interval: str | None
    customer_id: str
    customer_name: str
    locale: str
    # The parties the invoice was issued with (None: a draft, or finalized before these
    # were kept): its emails name them as its document does.
    seller_party: dict[str, Any] | None
    buyer_party: dict[str, Any] | None
    # The storage key of the newest PDF it attaches: the invoice's, or the credit note's
    # its occasion names (see EmailKind.attaches).
    document_key: str | None
    # Its bytes, for a kind that attaches it, when they live in PostgreSQL.
    document_content: bytes | None


_deliveries = EmailDelivery.__table__
_invoices = Invoice.__table__
_customers = Customer.__table__
_documents = InvoiceDocument.__table__
_credit_note_documents = CreditNoteDocument.__table__
_subscriptions = Subscription.__table__
_prices = Price.__table__


def _is_any(column: Any, values: Sequence[str]) -> Any:
    # Equalities, not IN: a prebuilt statement takes no expanding list parameter.
    return or_(false(), *(column == value for value in values))


def _kinds_attaching(attachment: Attachment) -> list[str]:
    return [kind.name for kind in KINDS.values() if kind.attaches is attachment]


def _take_statement() -> Prebuilt:
    """Taking a delivery to send, in one statement and so one transaction: start its job
    (when b_job_id names one), lock the delivery, read what its message needs, and claim
    its ledger key, unless it went out already or its PDF is still to come.

    Started through a job, the delivery is the one named in the job's arguments, so a job
    that does not start takes nothing and the statement returns no row; without a job
    (b_job_id NULL) it is b_delivery_id's."""
    started = outbox.start_cte()
    delivery_id = func.coalesce(
        select(started.c.args["delivery_id"].astext).scalar_subquery(),
        bindparam("b_delivery_id", type_=String()),
    )
    newest_invoice_document = (
        select(_documents.c.storage_key)
        .where(_documents.c.invoice_id == _invoices.c.id)
        .order_by(_documents.c.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    newest_credit_note_document = (
        select(_credit_note_documents.c.storage_key)
        .where(_credit_note_documents.c.credit_note_id == _deliveries.c.occasion)
        .order_by(_credit_note_documents.c.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    newest_document = case(
        (
            _is_any(_deliveries.c.kind, _kinds_attaching(Attachment.CREDIT_NOTE_PDF)),
            newest_credit_note_document,
        ),
        else_=newest_invoice_document,
    )
    taken = (
        select(
            _deliveries.c.id,
            _deliveries.c.kind,
            _deliveries.c.status,
            _deliveries.c.recipient,
            # Not `attempts`: the started job's column of that name comes first.
            _deliveries.c.attempts.label("tries"),
            _deliveries.c.created_at,
            _deliveries.c.ledger_key,
            _deliveries.c.message_id,
            _deliveries.c.occasion,
            _deliveries.c.context,
            _invoices.c.id.label("invoice_id"),
            func.coalesce(_invoices.c.customer_id, _subscriptions.c.customer_id).label(
                "customer_id"
            ),
            _invoices.c.number,
            func.coalesce(_invoices.c.currency, _prices.c.currency).label("currency"),
            _invoices.c.status.label("invoice_status"),
            _invoices.c.collection_method,
            _invoices.c.total,
            _invoices.c.discount,
            _invoices.c.amount_paid,
            _invoices.c.amount_refunded,
            _invoices.c.balance_applied,
            _invoices.c.amount_credited,
            _invoices.c.finalized_at,
            _invoices.c.due_date,
            _invoices.c.paid_at,
            func.coalesce(
                _invoices.c.paid_at, _invoices.c.voided_at, _invoices.c.marked_uncollectible_at
            ).label("closed_at"),
            _subscriptions.c.id.label("subscription_id"),
            _subscriptions.c.trial_end,
            _prices.c.product,
            _prices.c.unit_amount,
            _subscriptions.c.quantity,
            _prices.c.interval,
            _customers.c.name.label("customer_name"),
            _customers.c.locale,
            _invoices.c.seller_party,
            _invoices.c.buyer_party,
            newest_document.label("document_key"),
        )
        .select_from(
            # An email is about an invoice, or about a subscription alone (and its price).
            _deliveries.outerjoin(_invoices, _invoices.c.id == _deliveries.c.invoice_id)
            .outerjoin(_subscriptions, _subscriptions.c.id == _deliveries.c.subscription_id)
            .outerjoin(_prices, _prices.c.id == _subscriptions.c.price_id)
            .join(
                _customers,
                _customers.c.id
                == func.coalesce(_invoices.c.customer_id, _subscriptions.c.customer_id),
            )
        )
        .where(_deliveries.c.id == delivery_id)
        # Serializes the senders of one delivery.
        .with_for_update(of=_deliveries)
        .cte("delivery")
    )
    attaches_pdf = _is_any(
        taken.c.kind, [kind.name for kind in KINDS.values() if kind.attaches is not None]
    )
    claim = ledger.claim_or_resume(
        LEDGER_SCOPE,
        taken.c.ledger_key,
        taken.c.id,
        _is_any(taken.c.status, [status for status in DeliveryStatus if may_be_sent(status)]),
        ~attaches_pdf | taken.c.document_key.is_not(None),
    )
    return Prebuilt(
        select(
            *outbox.started_columns(started),
            *taken.c,
            # NULL for a PDF stored elsewhere (S3): the sender fetches it from there.
            case((attaches_pdf, content_in_sql(taken.c.document_key))).label("document_content"),
            select(claim.c.id).scalar_subquery().label("claimed_entry"),
            select(claim.c.attempt).scalar_subquery().label("claimed_attempt"),
            ledger.earlier_claim(LEDGER_SCOPE, taken.c.ledger_key).label("earlier_claim"),
        )
        # A row for the started job and one for the delivery, both, or none: a job whose
        # delivery is gone still starts, to fail for an operator to see.
        .select_from(started.join(taken, true(), full=True))
    )


_TAKE = _take_statement()
_TAKE_EXTRAS = ("claimed_entry", "claimed_attempt", "earlier_claim")
_JOB_COLUMNS = tuple(column.name for column in outbox.started_columns(outbox.start_cte()))


@dataclass(frozen=True)
class Taken:
    """A take's answer: the delivery (None when there is no such delivery) and what its
    ledger claim found (meaningless when none was tried: sent already, or no PDF yet)."""

    mail: Outgoing | None
    claimed: ClaimResult | None


def _taken(row: Any) -> Taken:
    fields = row._asdict() if row is not None else {"id": None}
    if fields["id"] is None:
        return Taken(None, None)
    claimed = ledger.claim_found(
        fields["id"],
        fields["claimed_entry"],
        fields["claimed_attempt"],
        fields["earlier_claim"],
    )
    for column in (*_JOB_COLUMNS, *_TAKE_EXTRAS):
        del fields[column]
    return Taken(Outgoing(**fields), claimed)


def start_sending(
    job_id: str, *, worker: str | None = None, connection: Connection | None = None
) -> tuple[outbox.StartedJob | None, dict[str, Any]]:
    """The mail job's start and its delivery's take, in one statement."""
    job, row = outbox.start_job_with(
        job_id, _TAKE, {"b_claim_lease": _mail_lease()}, worker=worker, connection=connection
    )
    if job is None:
        return None, {}
    return job, {**job.args, "taken": _taken(row)}


def _take(work: outbox.JobWork, delivery_id: str) -> Taken:
    """The same take for a send outside a job (an operator's or a test's direct call)."""
    with work.statements() as connection:
        row = _TAKE.execute(
            connection, {"b_delivery_id": delivery_id, "b_claim_lease": _mail_lease()}
        ).one_or_none()
    return _taken(row)


# Recording a try, in one statement each way and so one transaction without BEGIN or
# COMMIT; each changes the delivery only if this attempt still held its ledger entry, and
# only from the status the take read (every change of it was checked against the rules of
# billing.notifications.rules before it is sent).
_DELIVERY = (_deliveries.c.id == bindparam("b_delivery_id")) & (
    _deliveries.c.status == bindparam("b_status_was", type_=String())
)
# Sent: the ledger's outcome, the delivery's status and the job's end.
_ENTRY_SENT = ledger.completion("succeeded")
_STILL_HELD = exists(select(_ENTRY_SENT.c.id))
_DELIVERY_SENT = (
    update(_deliveries)
    .where(_DELIVERY, _STILL_HELD)
    .values(
        status=DeliveryStatus.SENT.value,
        error=None,
        sent_at=func.now(),
        attempts=_deliveries.c.attempts + 1,
    )
    .returning(_deliveries.c.id)
    .cte("delivery_sent")
)
_JOB_SUCCEEDED = outbox.job_success(_STILL_HELD)
_EVENT_SENT = events.recorded_with(
    _DELIVERY_SENT,
    EventType.EMAIL_SENT,
    # As the API shows sent_at: whole seconds of the delivery's own stamp.
    set_in_sql={"sent_at": cast(func.floor(func.extract("epoch", func.now())), BigInteger)},
)
_RECORD_SENT = Prebuilt(
    select(
        *(
            select(func.count()).select_from(cte).scalar_subquery().label(name)
            for name, cte in (
                ("entries", _ENTRY_SENT),
                ("deliveries", _DELIVERY_SENT),
                ("jobs", _JOB_SUCCEEDED),
                ("events", _EVENT_SENT),
            )
        )
    )
)
# Not sent: the claim released (nothing went out, so the next try may claim afresh) and
# the delivery's error, and its status when the server refused it for good.
_ENTRY_RELEASED = ledger.release_cte()
_DELIVERY_NOT_SENT = (
    update(_deliveries)
    .where(_DELIVERY, exists(select(_ENTRY_RELEASED.c.id)))
    .values(
        status=bindparam("b_status", type_=String()),
        error=bindparam("b_error", type_=String()),
        attempts=_deliveries.c.attempts + 1,
    )
    .returning(_deliveries.c.id)
    .cte("delivery_not_sent")
)
# Refused for good: the email's failure is an event; a deferral is not (even of a delivery
# that failed before and is being resent).
_DELIVERY_FAILED = (
    select(_DELIVERY_NOT_SENT.c.id)
    .where(bindparam("b_rejected", type_=Boolean()))
    .cte("delivery_failed")
)
_EVENT_FAILED = events.recorded_with(_DELIVERY_FAILED, EventType.EMAIL_FAILED)
_RECORD_NOT_SENT = Prebuilt(
    select(
        *(
            select(func.count()).select_from(cte).scalar_subquery().label(name)
            for name, cte in (
                ("entries", _ENTRY_RELEASED),
                ("deliveries", _DELIVERY_NOT_SENT),
                ("events", _EVENT_FAILED),
            )
        )
    )
)


def _record(
    work: outbox.JobWork,
    mail: Outgoing,
    claimed: ClaimResult,
    outcome: SendOutcome,
    error: str | None,
) -> Any:
    """Record how this try ended; its `entries` count is 0 when the claim was taken over."""
    status = after_try(mail.status, outcome)
    error = (error or "")[:2000] if outcome is not SendOutcome.SENT else None
    params: dict[str, Any] = {
        "b_entry_id": claimed.entry_id,
        "b_attempt": claimed.attempt,
        "b_delivery_id": mail.id,
        "b_status_was": mail.status,
        # The email as its event shows it once this statement changed it.
        **events.event_params(
            "email",
            _ShownEmail(
                mail.id,
                mail.invoice_id,
                mail.subscription_id,
                mail.kind,
                mail.recipient,
                status.value,
                error,
                mail.tries + 1,
                mail.message_id,
                mail.created_at,
                None,  # set by the statement itself when sent
            ),
            mail.customer_id,
            # A deferral records no event: its snapshot would go unused.
            recorded=outcome is not SendOutcome.NOT_SENT,
        ),
    }
    with work.statements() as connection:
        if outcome is SendOutcome.SENT:
            recorded = _RECORD_SENT.execute(
                connection,
                {
                    **params,
                    "b_outcome": {"message_id": mail.message_id},
                    **work.job_params(),
                },
            ).one()
            if recorded.jobs:
                work.job_finished()
            return recorded
        return _RECORD_NOT_SENT.execute(
            connection,
            {
                **params,
                "b_status": status.value,
                "b_error": error,
                "b_rejected": outcome is SendOutcome.REJECTED,
            },
        ).one()


@dataclass(frozen=True)
class _ShownEmail:
    """A delivery's fields as one try leaves them, for its event's snapshot."""

    id: str
    invoice_id: str | None
    subscription_id: str | None
    kind: str
    recipient: str
    status: str
    error: str | None
    attempts: int
    message_id: str
    created_at: datetime
    sent_at: datetime | None


def _buyer_name(mail: Outgoing) -> str:
    return str(parties.shown(mail.buyer_party, {"name": mail.customer_name}).get("name") or "")


def _amount_due(mail: Outgoing) -> int:
    """As Invoice.amount_due: what neither payment, balance nor credit note has settled."""
    settled = (mail.amount_paid or 0) + (mail.balance_applied or 0) + (mail.amount_credited or 0)
    return (mail.total or 0) - settled


def _view(mail: Outgoing, kind: EmailKind, occasion: Mapping[str, Any] | None) -> dict[str, Any]:
    """The invoice's fields every email shows, and those its kind adds."""
    settings = context.settings()
    locale = mail.locale or "en_US"
    seller = parties.shown(mail.seller_party, parties.configured_seller(settings))

    def money(amount: int) -> str:
        return format_money(amount, mail.currency, locale)

    def day(value: date | datetime | None) -> str:
        return _date(value, locale)

    invoice_url = urls.hosted_url(mail.number, mail.closed_at, fresh=True)
    view: dict[str, Any] = {
        "seller_name": seller.get("name") or "",
        "seller_email": seller.get("email"),
        "portal_url": settings.customer_portal_url,
        "invoice_url": invoice_url,
        "payment_instructions": settings.seller_payment_instructions,
        "customer_name": _buyer_name(mail),
        **(_invoice_view(mail, money, day) if mail.invoice_id is not None else {}),
        **(_subscription_view(mail, money, day) if mail.subscription_id is not None else {}),
    }
    facts = Facts(
        occasion=occasion,
        context=mail.context or {},
        due_date=mail.due_date,
        portal_url=settings.customer_portal_url,
        invoice_url=invoice_url,
        money=money,
        date=day,
    )
    return {**view, **kind.view(facts)}


def _attachment_name(
    attachment: Attachment, mail: Outgoing, occasion: Mapping[str, Any] | None
) -> str:
    if attachment is Attachment.CREDIT_NOTE_PDF:
        return f"credit-note-{(occasion or {}).get('number') or mail.occasion}.pdf"
    return f"invoice-{mail.number or mail.invoice_id}.pdf"


def _invoice_view(
    mail: Outgoing, money: Callable[[int], str], day: Callable[[date | datetime | None], str]
) -> dict[str, Any]:
    """The invoice's fields every email about an invoice shows."""
    discount, applied, credited = (
        mail.discount or 0,
        mail.balance_applied or 0,
        mail.amount_credited or 0,
    )
    return {
        "invoice_number": mail.number or mail.invoice_id,
        "status": mail.invoice_status,
        "collection_method": mail.collection_method,
        "total": money(mail.total or 0),
        "amount_paid": money(mail.amount_paid or 0),
        "amount_due": money(max(_amount_due(mail), 0)),
        # What took part of the invoice off without a payment: "" when nothing did.
        "discount": money(-discount) if discount else "",
        "balance_applied": money(applied) if applied else "",
        "amount_credited": money(credited) if credited else "",
        "amount_refunded": money(mail.amount_refunded or 0),
        "issue_date": day(mail.finalized_at),
        "due_date": day(mail.due_date),
        "paid_date": day(mail.paid_at),
    }


def _subscription_view(
    mail: Outgoing, money: Callable[[int], str], day: Callable[[date | datetime | None], str]
) -> dict[str, Any]:
    """The subscription's fields an email about a subscription alone shows: its plan as it
    stands at the send (a change during the trial is what will be charged)."""
    quantity = mail.quantity or 1
    return {
        "product": mail.product or "",
        "quantity": quantity,
        "unit_amount": money(mail.unit_amount or 0),
        "period_amount": money((mail.unit_amount or 0) * quantity),
        "interval": mail.interval or "",
        "trial_end_date": day(mail.trial_end),
    }


def build_message(mail: Outgoing, work: outbox.JobWork | None = None) -> Message:
    work = work or outbox.JobWork.outside_a_job()
    kind = KINDS[mail.kind]
    occasion = None
    if kind.occasion is not None:
        with work.statements() as connection:
            occasion = occasion_of(connection, kind, mail.occasion)
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
    if kind.attaches is not None:
        assert mail.document_key is not None  # send_email sends nothing without it
        content = mail.document_content
        if content is None:  # not read with the take: stored elsewhere (S3)
            content = work.gateways.storage.get(mail.document_key)
        name = _attachment_name(kind.attaches, mail, occasion)
        message.attach(filename=name, content_type="application/pdf", data=bytes(content))
        xml = embedded_xml(bytes(content)) if context.settings().einvoice_email_attachment else None
        if xml is not None:
            message.attach(
                filename=name.removesuffix(".pdf") + ".xml",
                content_type="application/xml",
                data=xml,
            )
    return message


def send_email(
    delivery_id: str, taken: Taken | None = None, *, work: outbox.JobWork | None = None
) -> str:
    """The `mail.send_email` job: send one delivery, at most once. `taken` is its take
    when the job's start made it already (start_sending)."""
    work = work or outbox.JobWork.outside_a_job()
    taken = taken or _take(work, delivery_id)
    mail, claimed = taken.mail, taken.claimed
    if mail is None or claimed is None:
        raise PermanentJobError(f"no email delivery {delivery_id}")
    if not may_be_sent(mail.status):
        EMAILS.labels(kind=mail.kind, outcome="skipped").inc()
        return "sent"
    if KINDS[mail.kind].attaches is not None and mail.document_key is None:
        # The take claimed nothing: the key stays free until the PDF is there.
        raise TransientJobError(
            f"the {mail.kind} email of invoice {mail.invoice_id} has no PDF yet", retry_after=10
        )
    if claimed.claim is Claim.DONE:
        # The ledger's success is recorded with the delivery's, in one statement: an entry
        # done for a delivery still to send was changed by hand, and sending could repeat it.
        raise PermanentJobError(
            f"email {delivery_id} is {mail.status} but its ledger key {mail.ledger_key} is "
            f"{claimed.state}: not sent, for an operator to look into"
        )
    claimed = ledger.usable(claimed, LEDGER_SCOPE, mail.ledger_key, mail.id, _mail_lease())
    if claimed.claim is Claim.RESUMED:
        log.warning("email.resumed_after_crash", delivery_id=delivery_id)

    try:
        message = build_message(mail, work)
    except BaseException as exc:
        # Nothing went out: the claim is released, so the next attempt may claim afresh.
        _record(work, mail, claimed, SendOutcome.NOT_SENT, f"{type(exc).__name__}: {exc}")
        raise
    try:
        work.gateways.mailer.send(message)
    except (MailTransientError, MailRejected) as exc:
        # Not accepted: nothing went out, so the key is free for the next attempt
        # (the job's retry, or an operator's replay after fixing the address).
        permanent = isinstance(exc, MailRejected)
        outcome = SendOutcome.REJECTED if permanent else SendOutcome.NOT_SENT
        if not _record(work, mail, claimed, outcome, str(exc)).entries:
            raise TransientJobError(f"email {delivery_id} was taken over") from exc
        EMAILS.labels(kind=mail.kind, outcome="rejected" if permanent else "retry").inc()
        if permanent:
            log.error("email.rejected", delivery_id=delivery_id, kind=mail.kind, error=str(exc))
            raise PermanentJobError(f"email to {mail.recipient} refused: {exc}") from exc
        raise TransientJobError(f"email to {mail.recipient} deferred: {exc}") from exc

    if not _record(work, mail, claimed, SendOutcome.SENT, None).entries:
        raise TransientJobError(f"email {delivery_id} was taken over")
    EMAILS.labels(kind=mail.kind, outcome="sent").inc()
    log.info("email.sent", delivery_id=delivery_id, kind=mail.kind, message_id=mail.message_id)
    return "sent"


def get_delivery(delivery_id: str) -> EmailDelivery:
    delivery = db.session.get(EmailDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"No such email: '{delivery_id}'", param="id")
    return delivery
