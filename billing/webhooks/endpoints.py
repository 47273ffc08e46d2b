"""Webhook endpoints: where the company's app wants events, and the secrets that sign them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.adapters.webhook_http import UnsafeUrl, check_url
from billing.events.rules import ALL_TYPES, unknown_types
from billing.extensions import db
from billing.models import WebhookDelivery, WebhookEndpoint, WebhookSecret
from billing.platform import context
from billing.platform.errors import NotFound, ServiceError
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.webhooks.rules import UNFINISHED, DeliveryState, require_transition
from billing.webhooks.signatures import new_secret

log = get_logger(__name__)


class WebhookUrlRefused(ServiceError):
    """The URL is not one we send to: its `code` says why (UnsafeUrl's codes)."""

    status = 400

    def __init__(self, exc: UnsafeUrl) -> None:
        super().__init__(str(exc), param="url")
        self.code = exc.code


class EventTypeUnknown(ServiceError):
    code = "event_type_unknown"
    status = 400


@dataclass(frozen=True)
class EndpointFields:
    url: str
    event_types: Sequence[str]
    description: str | None = None
    enabled: bool = True


def _checked_url(url: str) -> str:
    try:
        check_url(url, allowed_hosts=context.settings().webhook_allowed_hosts)
    except UnsafeUrl as exc:
        raise WebhookUrlRefused(exc) from exc
    return url


def _checked_types(event_types: Sequence[str]) -> list[str]:
    unknown = unknown_types(list(event_types))
    if unknown:
        raise EventTypeUnknown(
            f"unknown event types: {', '.join(sorted(unknown))}", param="enabled_events"
        )
    types = sorted(set(event_types))
    return [ALL_TYPES] if ALL_TYPES in types else types


def create_endpoint(fields: EndpointFields) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its signing secret, which is shown this once."""
    # The types first: checking the URL asks DNS.
    event_types = _checked_types(fields.event_types)
    url = _checked_url(fields.url)
    secret = new_secret()
    with transaction() as session:
        endpoint = WebhookEndpoint(
            url=url,
            event_types=event_types,
            description=fields.description,
            enabled=fields.enabled,
        )
        session.add(endpoint)
        session.flush()
        session.add(WebhookSecret(endpoint_id=endpoint.id, secret=secret))
    log.info("webhook_endpoint.created", endpoint_id=endpoint.id)
    return endpoint, secret


def get_endpoint(endpoint_id: str) -> WebhookEndpoint:
    return existing(db.session(), endpoint_id)


def existing(
    session: Session, endpoint_id: str, *, locked: bool = False, param: str = "id"
) -> WebhookEndpoint:
    """The endpoint, unless there is none or it was deleted (NotFound, naming `param`)."""
    if locked:
        endpoint = session.get(
            WebhookEndpoint, endpoint_id, with_for_update=True, populate_existing=True
        )
    else:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'", param=param)
    return endpoint


def _locked(session: Session, endpoint_id: str) -> WebhookEndpoint:
    return existing(session, endpoint_id, locked=True)


def list_endpoints(*, limit: int, starting_after: str | None) -> Page[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.deleted_at.is_(None))
    return paginate(query, WebhookEndpoint.id, limit, starting_after)


def update_endpoint(endpoint_id: str, changes: dict[str, Any]) -> WebhookEndpoint:
    """Change the URL (checked again), the event types, the description, or enable it
    again: an endpoint the service disabled starts afresh, its failures forgotten."""
    types = (
        _checked_types(changes["enabled_events"])
        if changes.get("enabled_events") is not None
        else None
    )
    url = _checked_url(changes["url"]) if changes.get("url") is not None else None
    with transaction() as session:
        endpoint = _locked(session, endpoint_id)
        if url is not None:
            endpoint.url = url
        if types is not None:
            endpoint.event_types = types
        if "description" in changes:
            endpoint.description = changes["description"]
        if changes.get("enabled") is not None:
            enabled = bool(changes["enabled"])
            if enabled and not endpoint.enabled:
                endpoint.disabled_reason = None
                endpoint.failing_since = None
            endpoint.enabled = enabled
    log.info("webhook_endpoint.updated", endpoint_id=endpoint_id, fields=sorted(changes))
    return endpoint


def delete_endpoint(endpoint_id: str) -> WebhookEndpoint:
    """Nothing more is sent to it; it stays, with its deliveries, for the record (those
    still to send end canceled)."""
    with transaction() as session:
        endpoint = _locked(session, endpoint_id)
        endpoint.enabled = False
        endpoint.deleted_at = func.now()
        for delivery in session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.state.in_([s.value for s in UNFINISHED]),
            )
        ):
            delivery.state = require_transition(delivery.state, DeliveryState.CANCELED).value
            delivery.finished_at = func.now()
            delivery.next_attempt_at = None
            delivery.last_error = "the endpoint was deleted"
    log.info("webhook_endpoint.deleted", endpoint_id=endpoint_id)
    return endpoint


def roll_secret(endpoint_id: str, overlap: timedelta | None = None) -> tuple[WebhookEndpoint, str]:
    """A new signing secret; the current ones go on signing for `overlap` (the setting's
    by default), so that the receiver can switch without missing a delivery."""
    if overlap is None:
        overlap = timedelta(seconds=context.settings().webhook_secret_overlap_seconds)
    secret = new_secret()
    with transaction() as session:
        endpoint = _locked(session, endpoint_id)
        for old in session.scalars(
            select(WebhookSecret).where(
                WebhookSecret.endpoint_id == endpoint_id,
                (WebhookSecret.expires_at.is_(None))
                | (WebhookSecret.expires_at > func.now() + overlap),
            )
        ):
            old.expires_at = func.now() + overlap
        session.add(WebhookSecret(endpoint_id=endpoint_id, secret=secret))
    log.info("webhook_endpoint.secret_rolled", endpoint_id=endpoint_id, overlap=str(overlap))
    return endpoint, secret


def signing_secrets(session: Session, endpoint_id: str, now: datetime) -> list[str]:
    """The secrets that sign a delivery made `now`: the newest first."""
    return list(
        session.scalars(
            select(WebhookSecret.secret)
            .where(
                WebhookSecret.endpoint_id == endpoint_id,
                (WebhookSecret.expires_at.is_(None)) | (WebhookSecret.expires_at > now),
            )
            .order_by(WebhookSecret.created_at.desc(), WebhookSecret.id.desc())
        )
    )
