"""Customer emails: recorded with the event that calls for them, sent once on the mail queue.

Each (kind, invoice, occasion, recipient) is one `EmailDelivery` row with a unique ledger
key, recorded in the same transaction as the event, so an event recorded twice (a webhook
and the charge job, say) asks for one email. Sending claims that key in the ledger first,
so a redelivered task does not send again. SMTP cannot be asked afterwards whether it took
a message, so a worker killed between the server's "250 OK" and our commit is the one case
where a message may go out twice; it then carries the same Message-ID (derived from the
ledger key), which lets mail clients fold the two into one."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from babel.dates import format_date
from flask_mail import Message
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, joinedload

from billing import jobs
from billing.adapters.mailer import MailRejected, MailTransientError
from billing.domain.declines import explain_decline
from billing.domain.money import format_money
from billing.extensions import db
from billing.ids import new_id
from billing.logging import get_logger
from billing.metrics import EMAILS, count_on_commit
from billing.models import ChargeAttempt, Customer, EmailDelivery, Invoice, InvoiceDocument, Refund
from billing.notifications.compose import compose, single_line
from billing.services import context, ledger
from billing.services.errors import NotFound, PermanentJobError, TransientJobError
from billing.services.ledger import Claim
from billing.services.outbox import finish_running_job, record_jobs
from billing.services.unit_of_work import transaction

log = get_logger(__name__)

LEDGER_SCOPE = "email.send"
NO_OCCASION = "-"
# Ends the ledger key of an operator's resend, followed by its number.
RESEND_MARK = ":resend-"


def recipients_of(customer: Customer) -> list[str]:
    """The customer's email, then its further billing emails; each address once."""
    seen: set[str] = set()
    addresses: list[str] = []
    for address in [customer.email, *(customer.billing_emails or [])]:
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
    rows = []
    for request in requests:
        for recipient in recipients_of(request.invoice.customer):
            key = f"{request.kind}:{request.invoice.id}:{request.occasion}:{recipient.lower()}"
            if request.resend is not None:
                key += f"{RESEND_MARK}{request.resend}"
            rows.append(
                {
                    "id": new_id("em"),
                    "kind": request.kind,
                    "invoice_id": request.invoice.id,
                    "occasion": request.occasion,
                    "recipient": recipient,
                    "ledger_key": key,
                    "context": request.context,
                    "message_id": message_id_for(key),
                }
            )
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


def emails_of(invoice_id: str) -> list[EmailDelivery]:
    return list(
        db.session.scalars(
            select(EmailDelivery)
            .where(EmailDelivery.invoice_id == invoice_id)
            .order_by(EmailDelivery.created_at, EmailDelivery.id)
        )
    )


# --- sending ----------------------------------------------------------------------------


def _mail_lease() -> timedelta:
    # Longer than a send can take (connect, then the message, each within the timeout),
    # so a live sender is never taken over.
    return timedelta(seconds=max(60, 4 * int(context.settings().mail["MAIL_TIMEOUT"])))


def _date(value: date | datetime | None, locale: str) -> str:
    if value is None:
        return ""
    day = value.date() if isinstance(value, datetime) else value
    return str(format_date(day, format="long", locale=locale))


def _action_url(attempt: ChargeAttempt | None) -> str | None:
    next_action = (attempt.next_action if attempt is not None else None) or {}
    redirect = next_action.get("redirect_to_url") or {}
    url = redirect.get("url") if isinstance(redirect, dict) else None
    return str(url) if url else context.settings().customer_portal_url


def _view(session: Session, delivery: EmailDelivery, invoice: Invoice) -> dict[str, Any]:
    settings = context.settings()
    customer = invoice.customer
    locale = customer.locale or "en_US"

    def money(amount: int) -> str:
        return format_money(amount, invoice.currency, locale)

    view: dict[str, Any] = {
        "seller_name": settings.seller_name,
        "seller_email": settings.seller_email,
        "portal_url": settings.customer_portal_url,
        "payment_instructions": settings.seller_payment_instructions,
        "customer_name": customer.name,
        "invoice_number": invoice.number or invoice.id,
        "status": invoice.status,
        "collection_method": invoice.collection_method,
        "total": money(invoice.total),
        "amount_paid": money(invoice.amount_paid),
        "amount_due": money(max(invoice.total - invoice.amount_paid, 0)),
        "amount_refunded": money(invoice.amount_refunded),
        "issue_date": _date(invoice.finalized_at, locale),
        "due_date": _date(invoice.due_date, locale),
        "paid_date": _date(invoice.paid_at, locale),
    }
    extra = delivery.context or {}
    if delivery.kind in ("payment_failed", "authentication_required"):
        attempt = session.get(ChargeAttempt, delivery.occasion)
        if attempt is not None:
            view["amount_due"] = money(attempt.amount)
        explanation = explain_decline(attempt.decline_code if attempt is not None else None)
        view["reason"] = explanation.reason
        view["what_to_do"] = explanation.what_to_do
        view["action_url"] = _action_url(attempt)
        retry = extra.get("next_retry_date")
        view["next_retry_date"] = _date(date.fromisoformat(retry), locale) if retry else ""
    elif delivery.kind == "refund_issued":
        refund = session.get(Refund, delivery.occasion)
        view["refund_amount"] = money(refund.amount if refund is not None else 0)
    elif delivery.kind == "payment_reminder":
        as_of = date.fromisoformat(extra["as_of"]) if extra.get("as_of") else date.today()
        due = invoice.due_date or as_of
        view["days_overdue"] = (as_of - due).days
    return view


def _latest_pdf(session: Session, invoice_id: str) -> InvoiceDocument | None:
    return session.scalars(
        select(InvoiceDocument)
        .where(InvoiceDocument.invoice_id == invoice_id)
        .order_by(InvoiceDocument.version.desc())
        .limit(1)
    ).first()


def build_message(session: Session, delivery: EmailDelivery) -> Message:
    invoice = delivery.invoice
    composed = compose(delivery.kind, _view(session, delivery, invoice))
    # The display name is the customer's own text: folded to one line, it can never end
    # the To header and start another, whatever the database holds.
    message = Message(
        subject=composed.subject,
        recipients=[(single_line(invoice.customer.name), delivery.recipient)],
        body=composed.text,
        html=composed.html,
        extra_headers={"Auto-Submitted": "auto-generated"},
    )
    message.msgId = delivery.message_id
    if delivery.kind == "invoice_issued":
        document = _latest_pdf(session, invoice.id)
        if document is None:
            raise TransientJobError(f"invoice {invoice.id} has no PDF yet", retry_after=10)
        content = context.document_storage().get(document.storage_key)
        message.attach(
            filename=f"invoice-{invoice.number or invoice.id}.pdf",
            content_type="application/pdf",
            data=content,
        )
    return message


def send_email(delivery_id: str) -> str:
    """The `mail.send_email` job: send one delivery, at most once."""
    with transaction() as session:
        # The invoice and its customer come along: the message needs them.
        delivery = session.get(
            EmailDelivery,
            delivery_id,
            with_for_update={"of": EmailDelivery},
            options=[joinedload(EmailDelivery.invoice).joinedload(Invoice.customer)],
        )
        if delivery is None:
            raise PermanentJobError(f"no email delivery {delivery_id}")
        if delivery.status == "sent":
            count_on_commit(session, EMAILS.labels(kind=delivery.kind, outcome="skipped"))
            return "sent"
        claimed = ledger.claim_in_transaction(
            LEDGER_SCOPE, delivery.ledger_key, delivery.id, lease=_mail_lease()
        )
        if claimed.claim is Claim.DONE:
            delivery.status = "sent"
            count_on_commit(session, EMAILS.labels(kind=delivery.kind, outcome="skipped"))
            return "sent"
        if claimed.claim is Claim.RESUMED:
            log.warning("email.resumed_after_crash", delivery_id=delivery_id)
        message = build_message(session, delivery)
        recipient, kind = delivery.recipient, delivery.kind

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
        EMAILS.labels(kind=kind, outcome="rejected" if permanent else "retry").inc()
        if permanent:
            log.error("email.rejected", delivery_id=delivery_id, kind=kind, error=str(exc))
            raise PermanentJobError(f"email to {recipient} refused: {exc}") from exc
        raise TransientJobError(f"email to {recipient} deferred: {exc}") from exc

    try:
        with transaction() as session:
            ledger.complete(claimed, "succeeded", outcome={"message_id": message.msgId})
            session.execute(
                update(EmailDelivery)
                .where(EmailDelivery.id == delivery_id)
                .values(
                    status="sent",
                    error=None,
                    sent_at=func.now(),
                    attempts=EmailDelivery.attempts + 1,
                )
            )
            finish_running_job(session)
    except ledger.LeaseLost as exc:
        raise TransientJobError(f"email {delivery_id} was taken over") from exc
    EMAILS.labels(kind=kind, outcome="sent").inc()
    log.info("email.sent", delivery_id=delivery_id, kind=kind, message_id=message.msgId)
    return "sent"


def get_delivery(delivery_id: str) -> EmailDelivery:
    delivery = db.session.get(EmailDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"No such email: '{delivery_id}'", param="id")
    return delivery
