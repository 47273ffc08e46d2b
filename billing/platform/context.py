"""What a use case needs from the running app: settings and adapters, bound at create_app."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, cast

import structlog
from flask import current_app

from billing.config import Settings

if TYPE_CHECKING:
    from billing.adapters.broker import BrokerView
    from billing.adapters.mailer import SmtpMailer
    from billing.adapters.storage import DocumentStorage
    from billing.adapters.stripe_gateway import StripeGateway
    from billing.adapters.task_queue import JobPublisher
    from billing.adapters.webhook_http import WebhookSender


def settings() -> Settings:
    return cast(Settings, current_app.config["BILLING_SETTINGS"])


def publisher() -> JobPublisher:
    return cast("JobPublisher", current_app.extensions["billing.publisher"])


def broker_view() -> BrokerView:
    return cast("BrokerView", current_app.extensions["billing.broker_view"])


def stripe_gateway() -> StripeGateway:
    return cast("StripeGateway", current_app.extensions["billing.stripe"])


def mailer() -> SmtpMailer:
    return cast("SmtpMailer", current_app.extensions["billing.mailer"])


def document_storage() -> DocumentStorage:
    return cast("DocumentStorage", current_app.extensions["billing.storage"])


def webhook_sender() -> WebhookSender:
    return cast("WebhookSender", current_app.extensions["billing.webhook_sender"])


@dataclass(frozen=True)
class Gateways:
    """The outside world a use case talks to, handed in by its caller (the job runner);
    a test hands in fakes."""

    stripe: StripeGateway
    mailer: SmtpMailer
    storage: DocumentStorage
    webhooks: WebhookSender


def gateways() -> Gateways:
    return Gateways(stripe_gateway(), mailer(), document_storage(), webhook_sender())


def stripe_call_lease() -> timedelta:
    """How long a claim on a Stripe side effect is held: three times the call's timeout
    (the attach path makes two calls), so a live attempt is never taken over, while a dead
    one is taken over soon after its call could possibly have ended."""
    return timedelta(seconds=3 * settings().stripe_timeout_seconds)


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None
