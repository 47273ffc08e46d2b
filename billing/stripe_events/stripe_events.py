"""Stripe webhooks: verify, store raw, acknowledge at once; apply on the billing queue.

Each event is stored under its own id, so a redelivery (Stripe retries, the emulator, a
replay) records nothing new. Applying one goes through the same rules and ledger as the
charge path and never moves an invoice backwards, so order does not matter either.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from billing.adapters.stripe_gateway import intent_from_payload, verify_webhook
from billing.charging import charges
from billing.charging.rules import ChargeStatus
from billing.domain.money import from_stripe_amount
from billing.extensions import db
from billing.models import ChargeAttempt, Invoice, StripeEvent
from billing.platform import context, jobs
from billing.platform.errors import PermanentJobError, ServiceError
from billing.platform.logging import get_logger
from billing.platform.metrics import WEBHOOK_EVENTS
from billing.platform.outbox import JobWork, record_job
from billing.platform.unit_of_work import transaction
from billing.stripe_events import rules
from billing.stripe_events.rules import EventStatus

log = get_logger(__name__)

# Stripe's own default: a signature older than five minutes is a replay.
SIGNATURE_TOLERANCE_SECONDS = 300


class InvalidEvent(ServiceError):
    code = "invalid_event"
    status = 400


class WebhookNotConfigured(ServiceError):
    code = "webhook_not_configured"
    status = 503
    retryable = True


def receive_event(payload: bytes, signature_header: str) -> tuple[str, bool]:
    """Verify and store one delivery. Returns the event id and whether it was new."""
    secret = context.settings().stripe_webhook_secret.get_secret_value()
    if not secret:
        raise WebhookNotConfigured("STRIPE_WEBHOOK_SECRET is not set; the event was not stored")
    event = verify_webhook(payload, signature_header, secret, SIGNATURE_TOLERANCE_SECONDS)
    created = _event_created(event)
    with transaction() as session:
        stored = session.execute(
            insert(StripeEvent)
            .values(
                id=event["id"],
                type=event["type"],
                payload=event,
                stripe_created_at=created,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(StripeEvent.id)
        ).scalar_one_or_none()
        if stored is not None:
            record_job(session, jobs.PROCESS_STRIPE_EVENT, event_id=event["id"])
    outcome = "received" if stored is not None else "duplicate"
    WEBHOOK_EVENTS.labels(type=event["type"], outcome=outcome).inc()
    log.info(
        "webhook.received", event_id=event["id"], type=event.get("type"), new=stored is not None
    )
    return event["id"], stored is not None


def _event_created(event: Any) -> datetime:
    """Check the shape of a signed event before storing it; the signature proves who sent
    it, not that Stripe's format is what this code expects."""
    if not isinstance(event, dict):
        raise InvalidEvent("a Stripe event is a JSON object")
    event_id, type_, created = event.get("id"), event.get("type"), event.get("created")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255 or "\x00" in event_id:
        raise InvalidEvent("a signed payload without a valid event id is not a Stripe event")
    if not isinstance(type_, str) or not 0 < len(type_) <= 128:
        raise InvalidEvent("the event has no valid type")
    if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created < 2**33:
        raise InvalidEvent("the event has no valid creation time")
    return datetime.fromtimestamp(created, UTC)


def process_event(event_id: str, *, work: JobWork | None = None) -> str:
    """The `billing.process_stripe_event` job: apply one stored event, once. It calls no
    gateway: the event carries what Stripe said."""
    event = db.session.get(StripeEvent, event_id)
    if event is None:
        raise PermanentJobError(f"no stored event {event_id}")
    if event.status in rules.APPLIED:
        return event.status
    payload: dict[str, Any] = event.payload
    event_type = event.type
    db.session.commit()
    handler = _HANDLERS.get(event_type)
    try:
        result = handler((payload.get("data") or {}).get("object") or {}) if handler else "ignored"
    except Exception as exc:
        _finish(event_id, EventStatus.FAILED, f"{type(exc).__name__}: {exc}")
        WEBHOOK_EVENTS.labels(type=event_type, outcome=EventStatus.FAILED).inc()
        raise
    outcome = EventStatus.IGNORED if result == "ignored" else EventStatus.PROCESSED
    _finish(event_id, outcome, None)
    WEBHOOK_EVENTS.labels(type=event_type, outcome=outcome).inc()
    log.info("webhook.processed", event_id=event_id, type=event_type, result=result)
    return result


def _move(event: StripeEvent, target: EventStatus) -> None:
    """Every change of an event's status: what its state machine allows, or an error."""
    event.status = rules.require_transition(event.status, target).value


def _finish(event_id: str, status: EventStatus, error: str | None) -> None:
    with transaction() as session:
        event = session.get(StripeEvent, event_id, with_for_update=True)
        assert event is not None
        if event.status in rules.APPLIED:
            # Another run of it (an operator's replay, say) applied it first: it stands.
            log.info("webhook.applied_by_another_run", event_id=event_id, status=event.status)
            return
        _move(event, status)
        event.error = error[:4000] if error else None
        event.processed_at = func.now()


def _payment_intent_event(intent: dict[str, Any]) -> str:
    attempt_id = charges.attempt_for_intent(intent.get("id"), intent.get("metadata") or {})
    db.session.commit()
    if attempt_id is None:
        return "ignored"  # not one of ours (another integration on the same account)
    return charges.apply_intent_from_stripe(attempt_id, intent_from_payload(intent))


def _invoice_for_intent(
    session: Any, intent_id: str | None, *, paid_by_it: bool = False
) -> Invoice | None:
    if not intent_id:
        return None
    query = select(ChargeAttempt.invoice_id).where(
        ChargeAttempt.stripe_payment_intent_id == intent_id
    )
    if paid_by_it:
        query = query.where(ChargeAttempt.status == ChargeStatus.SUCCEEDED.value)
    invoice_id = session.scalar(query)
    return session.get(Invoice, invoice_id, with_for_update=True) if invoice_id else None


def _charge_refunded(charge: dict[str, Any]) -> str:
    """Refunds made anywhere (our API, Stripe's dashboard) show on the invoice; the amount
    only ever grows, so an old event cannot shrink it."""
    with transaction() as session:
        # Only the payment the invoice counts: refunding a duplicate payment (recorded on
        # an attempt as duplicate_payment) gives back money the invoice never took.
        invoice = _invoice_for_intent(session, charge.get("payment_intent"), paid_by_it=True)
        if invoice is None:
            return "ignored"
        # Stripe's amount is in its unit for the currency (ISK: hundredths); ours is not.
        stripe_refunded = int(charge.get("amount_refunded") or 0)
        refunded = min(
            from_stripe_amount(stripe_refunded, str(charge.get("currency") or invoice.currency)),
            invoice.amount_paid,
        )
        if refunded <= invoice.amount_refunded:
            return "ignored"
        invoice.amount_refunded = refunded
    return "refunded"


def _dispute_created(dispute: dict[str, Any]) -> str:
    with transaction() as session:
        invoice = _invoice_for_intent(session, dispute.get("payment_intent"))
        if invoice is None:
            return "ignored"
        if invoice.disputed_at is None:
            invoice.disputed_at = func.now()
    log.error("invoice.disputed", invoice_id=invoice.id, dispute=dispute.get("id"))
    return "disputed"


_HANDLERS = {
    "payment_intent.succeeded": _payment_intent_event,
    "payment_intent.payment_failed": _payment_intent_event,
    "payment_intent.requires_action": _payment_intent_event,
    "payment_intent.canceled": _payment_intent_event,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
}


def replay_event(event_id: str) -> str:
    """Apply a stored event again (an operator's `billing webhooks replay`)."""
    with transaction() as session:
        event = session.get(StripeEvent, event_id, with_for_update=True)
        if event is None:
            raise PermanentJobError(f"no stored event {event_id}")
        _move(event, EventStatus.RECEIVED)
        event.error = None
        job_id = record_job(session, jobs.PROCESS_STRIPE_EVENT, event_id=event_id)
    return job_id
