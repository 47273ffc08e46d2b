"""Notices to the seller (SELLER_EMAIL) about the service itself, not about an invoice:
a webhook endpoint the service had to disable.

At least once: the job is recorded with the change that calls for it. A notice sent
again after a crash carries the same Message-ID, which mail clients show once."""

from __future__ import annotations

from flask_mail import Message

from billing.adapters.mailer import MailRejected, MailTransientError
from billing.extensions import db
from billing.models import WebhookEndpoint
from billing.notifications.emails import message_id_for
from billing.platform import context
from billing.platform.errors import PermanentJobError, TransientJobError
from billing.platform.logging import get_logger
from billing.platform.outbox import JobWork

log = get_logger(__name__)


def send_seller_notice(endpoint_id: str, reason: str, *, work: JobWork | None = None) -> str:
    """The `mail.send_seller_notice` job: tell the seller an endpoint was disabled."""
    work = work or JobWork.outside_a_job()
    settings = context.settings()
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise PermanentJobError(f"no webhook endpoint {endpoint_id}")
    if not settings.seller_email:
        # Nobody to tell: the log and the endpoint's own state say it.
        log.error("seller_notice.no_address", endpoint_id=endpoint_id, reason=reason)
        return "no_address"
    disabled_at = endpoint.updated_at.isoformat() if endpoint.updated_at else ""
    message = Message(
        subject=f"Webhook endpoint disabled: {endpoint.url}",
        recipients=[settings.seller_email],
        body=(
            f"The billing service stopped sending events to the webhook endpoint "
            f"{endpoint.id} ({endpoint.url}).\n\n"
            f"Why: {reason}.\n\n"
            "Events go on being recorded. Once the receiver works again, enable the endpoint "
            "(PATCH /v1/webhook_endpoints/{id} with enabled=true) and send what it missed "
            "with `billing webhook-deliveries replay --endpoint ID --since ...`.\n"
        ),
    )
    message.msgId = message_id_for(f"webhook-disabled:{endpoint.id}:{disabled_at}")
    db.session.rollback()  # nothing held while the SMTP server answers
    try:
        work.gateways.mailer.send(message)
    except MailTransientError as exc:
        raise TransientJobError(f"seller notice deferred: {exc}") from exc
    except MailRejected as exc:
        raise PermanentJobError(f"seller notice refused: {exc}") from exc
    log.info("seller_notice.sent", endpoint_id=endpoint_id)
    return "sent"
