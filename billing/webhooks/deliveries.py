"""Delivering events to webhook endpoints: at least once, signed, in order per object.

1. Dispatch (beat, one at a time under an advisory lock): each event not yet dispatched
   becomes one delivery per enabled endpoint that wants its type, in sequence order. A
   delivery whose endpoint still has an unfinished delivery of an earlier event about the
   same object is *waiting*; any other is *pending*, with its job.
2. The job (queue `webhooks`): read the delivery, its event and the endpoint's signing
   secrets; POST outside any transaction; record the try. A 2xx ends it succeeded and
   releases the next waiting delivery of that object; a failure schedules the next try
   (doubling, with jitter) until the retry window closes; a 410 disables the endpoint.
3. The dispatcher also releases, on each pass, every waiting delivery with nothing
   earlier left unfinished (a release that raced with a dispatch) or that waited longer
   than the order bound.

A worker killed mid-POST leaves its job to the outbox's sweeper: the event is sent again,
with the same event id in its idempotency header, for the receiver to drop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from billing.adapters.webhook_http import UnsafeUrl, WebhookResponse
from billing.events.events import envelope
from billing.events.rules import ALL_TYPES
from billing.extensions import db
from billing.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from billing.platform import context, jobs
from billing.platform.errors import NotFound, PermanentJobError
from billing.platform.ids import new_id
from billing.platform.logging import get_logger
from billing.platform.metrics import WEBHOOK_DELIVERIES
from billing.platform.outbox import JobWork, record_job, record_jobs
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.webhooks import rules
from billing.webhooks.endpoints import signing_secrets
from billing.webhooks.rules import DeliveryState, TryOutcome
from billing.webhooks.signatures import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

log = get_logger(__name__)

DISPATCH_BATCH = 1000
EVENT_TYPE_HEADER = "Billing-Event-Type"
_UNFINISHED = [state.value for state in rules.UNFINISHED]


def _wants(event_types: list[str], event_type: str) -> bool:
    return ALL_TYPES in event_types or event_type in event_types


def _order_wait() -> timedelta:
    return timedelta(seconds=context.settings().webhook_order_wait_seconds)


# --- dispatch ---------------------------------------------------------------------------


def dispatch_events(batch: int = DISPATCH_BATCH) -> int:
    """Hand every undispatched event to the endpoints, a batch per transaction, then
    release the waiting deliveries that may go. Returns the deliveries created. The caller
    holds the dispatch lock: one dispatcher at a time keeps an object's deliveries in
    sequence order."""
    created = 0
    while True:
        with transaction() as session:
            count, more = _dispatch_batch(session, batch)
        created += count
        if not more:
            break
    release_waiting()
    return created


def _dispatch_batch(session: Session, batch: int) -> tuple[int, bool]:
    events = session.execute(
        select(Event.id, Event.type, Event.object_id, Event.sequence)
        .where(Event.dispatched.is_(False))
        .order_by(Event.sequence)
        .limit(batch)
    ).all()
    if not events:
        return 0, False
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.enabled.is_(True), WebhookEndpoint.deleted_at.is_(None)
        )
    ).all()
    wanted = [
        (endpoint.id, event)
        for event in events
        for endpoint in endpoints
        if _wants(endpoint.event_types, event.type)
    ]
    rows: list[dict[str, Any]] = []
    if wanted:
        pairs = {(endpoint_id, event.object_id) for endpoint_id, event in wanted}
        # Pairs with a delivery still on its way: a new one of theirs waits behind it.
        busy: set[tuple[str, str]] = set(
            session.execute(
                select(WebhookDelivery.endpoint_id, WebhookDelivery.object_id)
                .where(
                    WebhookDelivery.state.in_(_UNFINISHED),
                    tuple_(WebhookDelivery.endpoint_id, WebhookDelivery.object_id).in_(
                        sorted(pairs)
                    ),
                )
                .distinct()
            ).all()
        )
        for endpoint_id, event in wanted:
            pair = (endpoint_id, event.object_id)
            state = DeliveryState.WAITING if pair in busy else DeliveryState.PENDING
            busy.add(pair)  # this batch's later events of the object wait behind this one
            rows.append(
                {
                    "id": new_id("whd"),
                    "endpoint_id": endpoint_id,
                    "event_id": event.id,
                    "object_id": event.object_id,
                    "sequence": event.sequence,
                    "state": state.value,
                }
            )
        session.execute(insert(WebhookDelivery.__table__), rows)
        record_jobs(
            session,
            jobs.DELIVER_WEBHOOK,
            [{"delivery_id": r["id"]} for r in rows if r["state"] == DeliveryState.PENDING],
        )
    session.execute(
        update(Event).where(Event.id.in_([e.id for e in events])).values(dispatched=True)
    )
    return len(rows), len(events) == batch


def release_waiting(limit: int = DISPATCH_BATCH) -> int:
    """Send every waiting delivery with no earlier one of its object left unfinished for
    its endpoint, or that waited longer than the order bound. Returns how many."""
    earlier = WebhookDelivery.__table__.alias("earlier")
    with transaction() as session:
        due = session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state == DeliveryState.WAITING.value,
                ~select(earlier.c.id)
                .where(
                    earlier.c.endpoint_id == WebhookDelivery.endpoint_id,
                    earlier.c.object_id == WebhookDelivery.object_id,
                    earlier.c.sequence < WebhookDelivery.sequence,
                    earlier.c.state.in_(_UNFINISHED),
                )
                .exists()
                | (WebhookDelivery.created_at < func.now() - _order_wait()),
            )
            .order_by(WebhookDelivery.sequence)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        _send(session, list(due))
    if due:
        log.info("webhook.deliveries_released", count=len(due))
    return len(due)


def _send(session: Session, delivery_ids: list[str]) -> None:
    """Make these waiting or ended deliveries pending, each with a job of its own."""
    if not delivery_ids:
        return
    for delivery in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
    ):
        delivery.state = rules.require_transition(delivery.state, DeliveryState.PENDING).value
        delivery.next_attempt_at = None
    record_jobs(session, jobs.DELIVER_WEBHOOK, [{"delivery_id": i} for i in delivery_ids])


def _release_next(session: Session, delivery: WebhookDelivery) -> None:
    """The delivery ended: the next waiting one of its object, if any, may go now."""
    following = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.state)
        .where(
            WebhookDelivery.endpoint_id == delivery.endpoint_id,
            WebhookDelivery.object_id == delivery.object_id,
            WebhookDelivery.state.in_(_UNFINISHED),
            WebhookDelivery.sequence > delivery.sequence,
        )
        .order_by(WebhookDelivery.sequence)
        .limit(1)
        .with_for_update()
    ).one_or_none()
    if following is not None and following.state == DeliveryState.WAITING:
        _send(session, [following.id])


# --- the delivery job --------------------------------------------------------------------


@dataclass(frozen=True)
class _Outgoing:
    delivery_id: str
    tries: int  # the delivery's attempts when read: the fencing token of this try
    url: str
    body: bytes
    event_id: str
    event_type: str
    secrets: list[str]


def deliver(delivery_id: str, *, work: JobWork | None = None) -> str:
    """The `webhooks.deliver` job: one try at one delivery. Returns its state after."""
    work = work or JobWork.outside_a_job()
    outgoing = _read(delivery_id, work)
    if isinstance(outgoing, str):
        return outgoing
    now = int(datetime.now(UTC).timestamp())
    headers = {
        SIGNATURE_HEADER: signature_header(outgoing.body, outgoing.secrets, now),
        EVENT_ID_HEADER: outgoing.event_id,
        EVENT_TYPE_HEADER: outgoing.event_type,
    }
    refused = False
    try:
        response = work.gateways.webhooks.post(outgoing.url, outgoing.body, headers)
    except UnsafeUrl as exc:
        # The name resolves elsewhere now: nothing was sent.
        refused = True
        response = WebhookResponse(status=None, body_excerpt="", duration_ms=0, error=str(exc))
    return _record(work, outgoing, response, rules.outcome_of(response.status, refused=refused))


def _read(delivery_id: str, work: JobWork) -> _Outgoing | str:
    with transaction() as session:
        found = session.execute(
            select(WebhookDelivery, WebhookEndpoint, Event)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id == delivery_id)
            .with_for_update(of=WebhookDelivery)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if found is None:
            raise PermanentJobError(f"no webhook delivery {delivery_id}")
        delivery, endpoint, event = found
        if delivery.state != DeliveryState.PENDING:
            # Ended already (a redelivered job), or waiting behind an earlier event.
            work.finish_job(session)
            return str(delivery.state)
        if not endpoint.enabled or endpoint.deleted_at is not None:
            _end(session, delivery, DeliveryState.CANCELED, "the endpoint is disabled")
            work.finish_job(session)
            return DeliveryState.CANCELED.value
        body = json.dumps(envelope(event), separators=(",", ":")).encode()
        return _Outgoing(
            delivery.id,
            delivery.attempts,
            endpoint.url,
            body,
            event.id,
            event.type,
            signing_secrets(session, endpoint.id, datetime.now(UTC)),
        )


def _end(session: Session, delivery: WebhookDelivery, state: DeliveryState, why: str) -> None:
    delivery.state = rules.require_transition(delivery.state, state).value
    delivery.finished_at = func.now()
    delivery.next_attempt_at = None
    if state is not DeliveryState.SUCCEEDED:
        delivery.last_error = why
    _release_next(session, delivery)


def _record(
    work: JobWork, outgoing: _Outgoing, response: WebhookResponse, outcome: TryOutcome
) -> str:
    settings = context.settings()
    with transaction() as session:
        delivery = session.get(
            WebhookDelivery, outgoing.delivery_id, with_for_update=True, populate_existing=True
        )
        assert delivery is not None
        if delivery.attempts != outgoing.tries or delivery.state != DeliveryState.PENDING:
            # Another run of this delivery recorded a try meanwhile: it owns what follows.
            work.finish_job(session)
            return str(delivery.state)
        endpoint = session.get(
            WebhookEndpoint, delivery.endpoint_id, with_for_update=True, populate_existing=True
        )
        assert endpoint is not None
        now = session.scalar(select(func.now()))
        assert now is not None
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                outcome=outcome.value,
                status_code=response.status,
                duration_ms=response.duration_ms,
                error=response.error,
                response_excerpt=response.body_excerpt or None,
            )
        )
        delivery.attempts += 1
        delivery.last_status = response.status
        delivery.first_attempt_at = delivery.first_attempt_at or now
        if outcome is TryOutcome.DELIVERED:
            _end(session, delivery, DeliveryState.SUCCEEDED, "")
            delivery.last_error = None
            endpoint.failing_since = None
        elif outcome is TryOutcome.GONE:
            _end(session, delivery, DeliveryState.FAILED, "the endpoint answered 410 Gone")
            _disable(session, endpoint, "the endpoint answered 410 Gone")
        else:
            error = response.error or f"HTTP {response.status}"
            endpoint.failing_since = endpoint.failing_since or now
            if rules.gives_up(
                delivery.first_attempt_at,
                now,
                timedelta(seconds=settings.webhook_retry_for_seconds),
            ):
                _end(session, delivery, DeliveryState.FAILED, f"gave up: {error}")
            else:
                delay = rules.retry_delay(
                    delivery.attempts,
                    base=timedelta(seconds=settings.webhook_retry_first_seconds),
                    cap=timedelta(seconds=settings.webhook_retry_longest_seconds),
                )
                delivery.state = rules.require_transition(
                    delivery.state, DeliveryState.PENDING
                ).value
                delivery.last_error = error
                delivery.next_attempt_at = now + delay
                record_jobs(
                    session, jobs.DELIVER_WEBHOOK, [{"delivery_id": delivery.id}], due_in=delay
                )
            if endpoint.enabled and rules.endpoint_disabled_by_failures(
                endpoint.failing_since,
                now,
                timedelta(seconds=settings.webhook_disable_after_seconds),
            ):
                _disable(session, endpoint, f"no delivery succeeded since {endpoint.failing_since}")
        work.finish_job(session)
        state = str(delivery.state)
    WEBHOOK_DELIVERIES.labels(outcome=outcome.value).inc()
    log.info(
        "webhook.try_recorded",
        delivery_id=outgoing.delivery_id,
        outcome=outcome.value,
        status=response.status,
        state=state,
    )
    return state


def _disable(session: Session, endpoint: WebhookEndpoint, reason: str) -> None:
    """Disabled by the service: nothing more is sent until its owner enables it again,
    and the seller hears of it (the job's email goes to SELLER_EMAIL)."""
    if not endpoint.enabled:
        return
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    record_job(session, jobs.SEND_SELLER_NOTICE, endpoint_id=endpoint.id, reason=reason)
    log.error("webhook_endpoint.disabled", endpoint_id=endpoint.id, reason=reason)


# --- reading and replaying ----------------------------------------------------------------


def list_deliveries(
    endpoint_id: str,
    *,
    state: str | None = None,
    limit: int,
    starting_after: str | None,
) -> Page[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    return paginate(query, WebhookDelivery.id, limit, starting_after)


def attempts_of(delivery_ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        for attempt in db.session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(delivery_ids)))
            .order_by(WebhookAttempt.id)
        ):
            found[attempt.delivery_id].append(attempt)
    return found


def get_delivery(delivery_id: str) -> WebhookDelivery:
    delivery = db.session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFound(f"No such webhook delivery: '{delivery_id}'", param="id")
    return delivery


def replay(
    *,
    delivery_id: str | None = None,
    endpoint_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[str]:
    """Send again one delivery, or every event of a range to an endpoint (those it was
    never given too, say while it was disabled), signed anew; in sequence order per
    object, as any delivery. Returns the deliveries sent again."""
    with transaction() as session:
        if delivery_id is not None:
            delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
            if delivery is None:
                raise NotFound(f"No such webhook delivery: '{delivery_id}'", param="id")
            endpoint_id = delivery.endpoint_id
            chosen = [delivery]
        else:
            if endpoint_id is None:
                raise ValueError("replay takes a delivery, or an endpoint and a range")
            chosen = _deliveries_in_range(session, endpoint_id, since, until)
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or endpoint.deleted_at is not None:
            raise NotFound(f"No such webhook endpoint: '{endpoint_id}'", param="endpoint")
        replayed = [d for d in chosen if d.state not in _UNFINISHED]
        for delivery in replayed:
            # Waiting, as a new delivery behind an earlier one: released just below in
            # sequence order, each object's next once its previous one ended.
            delivery.state = rules.require_transition(delivery.state, DeliveryState.WAITING).value
            delivery.first_attempt_at = None
            delivery.finished_at = None
            delivery.next_attempt_at = None
    release_waiting()
    log.info("webhook.replayed", endpoint_id=endpoint_id, deliveries=len(replayed))
    return [d.id for d in replayed]


def _deliveries_in_range(
    session: Session, endpoint_id: str, since: datetime | None, until: datetime | None
) -> list[WebhookDelivery]:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'", param="endpoint")
    in_range: list[Any] = [Event.dispatched.is_(True)]
    if since is not None:
        in_range.append(Event.created_at >= since)
    if until is not None:
        in_range.append(Event.created_at <= until)
    events = session.execute(
        select(Event.id, Event.type, Event.object_id, Event.sequence).where(and_(*in_range))
    ).all()
    have = set(
        session.scalars(
            select(WebhookDelivery.event_id).where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.event_id.in_([e.id for e in events]),
            )
        )
    )
    missing = [
        {
            "id": new_id("whd"),
            "endpoint_id": endpoint_id,
            "event_id": e.id,
            "object_id": e.object_id,
            "sequence": e.sequence,
            # Never sent: recorded as canceled, and replayed with the others just below.
            "state": DeliveryState.CANCELED.value,
        }
        for e in events
        if e.id not in have and _wants(endpoint.event_types, e.type)
    ]
    if missing:
        session.execute(insert(WebhookDelivery.__table__).values(finished_at=func.now()), missing)
    return list(
        session.scalars(
            select(WebhookDelivery)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id, and_(*in_range))
            .with_for_update(of=WebhookDelivery)
            .execution_options(populate_existing=True)
        )
    )


def oldest_undelivered_ages() -> dict[str, float]:
    """Per enabled endpoint, the age in seconds of its oldest event not yet delivered."""
    rows = db.session.execute(
        select(
            WebhookDelivery.endpoint_id,
            func.extract("epoch", func.now() - func.min(Event.created_at)),
        )
        .join(Event, Event.id == WebhookDelivery.event_id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.state.in_(_UNFINISHED), WebhookEndpoint.enabled.is_(True))
        .group_by(WebhookDelivery.endpoint_id)
    ).all()
    return {endpoint_id: float(age) for endpoint_id, age in rows}
