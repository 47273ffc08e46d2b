"""Delivering events to webhook endpoints: at least once, signed, in order per object.

1. Dispatch (beat, one at a time under an advisory lock): each event not yet dispatched
   becomes one delivery per enabled endpoint that wants its type, in sequence order. A
   delivery whose endpoint still has an unfinished delivery of an earlier event about the
   same object is *waiting*; any other is *pending*, due now.
2. The same pass gives every enabled endpoint with deliveries due, and no job of its own
   still unfinished, a job (queue `webhooks`) that drains them: it claims a batch of due
   deliveries (the claim is a short lease in `next_attempt_at`), POSTs them outside any
   transaction, a few at a time and each object's in sequence order, and records the whole
   batch in one transaction; then the next batch, until none is due or its time is up.
   A 2xx ends a delivery succeeded and releases the next waiting one of its object; a
   failure makes it due again later (doubling, with jitter) until the retry window
   closes; a 410 disables the endpoint.
3. The dispatcher also releases, on each pass, every waiting delivery with nothing
   earlier left unfinished (a release that raced with a dispatch) or that waited longer
   than the order bound.

A worker killed mid-batch leaves its deliveries claimed until the claim runs out; the
next drain sends them again, with the same event id in the idempotency header, for the
receiver to drop. One job per endpoint and batch, rather than one per delivery, is what
keeps the broker, the outbox and the commits from costing more than the POSTs.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    DateTime,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    exists,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from billing.adapters.webhook_http import UnsafeUrl, WebhookResponse
from billing.events.events import envelope
from billing.events.rules import ALL_TYPES
from billing.extensions import db
from billing.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from billing.platform import context, jobs
from billing.platform.errors import NotFound
from billing.platform.ids import new_id
from billing.platform.logging import get_logger
from billing.platform.metrics import WEBHOOK_DELIVERIES
from billing.platform.outbox import JobWork, has_unfinished_job, record_job, record_jobs
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.webhooks import rules
from billing.webhooks.endpoints import existing, signing_secrets
from billing.webhooks.rules import DeliveryState, TryOutcome
from billing.webhooks.signatures import EVENT_ID_HEADER, SIGNATURE_HEADER, signature_header

log = get_logger(__name__)

DISPATCH_BATCH = 1000
# POSTs under way at once within a drain, and the most deliveries claimed and recorded
# together. A drain starts small and doubles its batch while batches go quickly, so that
# an endpoint that answers slowly never holds many deliveries claimed.
SENDERS = 8
FIRST_BATCH = 2 * SENDERS
DRAIN_BATCH = 512
QUICK_BATCH_SECONDS = 2.0
DRAIN_BUDGET_SECONDS = rules.DRAIN_BUDGET_SECONDS
EVENT_TYPE_HEADER = "Billing-Event-Type"
_UNFINISHED = [state.value for state in rules.UNFINISHED]


def _wants(event_types: list[str], event_type: str) -> bool:
    return ALL_TYPES in event_types or event_type in event_types


def _order_wait() -> timedelta:
    return timedelta(seconds=context.settings().webhook_order_wait_seconds)


def claim_lease() -> timedelta:
    """How long a drain's claim on a delivery lasts: longer than its POST can take (the
    connect budget and the answer's), so a live drain's delivery is never taken twice,
    while one whose worker died is sent again soon after."""
    settings = context.settings()
    post = settings.webhook_connect_timeout_seconds + settings.webhook_timeout_seconds
    return timedelta(seconds=math.ceil(post) + 15)


# --- dispatch ---------------------------------------------------------------------------


def dispatch_events(batch: int = DISPATCH_BATCH) -> int:
    """Hand every undispatched event to the endpoints, a batch per transaction, release
    the waiting deliveries that may go, and give each endpoint with deliveries due a
    drain job. Returns the deliveries created. The caller holds the dispatch lock: one
    dispatcher at a time keeps an object's deliveries in sequence order."""
    created = 0
    while True:
        with transaction() as session:
            count, more = _dispatch_batch(session, batch)
        created += count
        if not more:
            break
    release_waiting()
    schedule_drains()
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
    session.execute(
        update(Event).where(Event.id.in_([e.id for e in events])).values(dispatched=True)
    )
    return len(rows), len(events) == batch


def _due() -> Any:
    """SQL: a delivery a drain may take now (pending, and due or its claim run out)."""
    return (WebhookDelivery.state == DeliveryState.PENDING.value) & (
        WebhookDelivery.next_attempt_at.is_(None) | (WebhookDelivery.next_attempt_at <= func.now())
    )


def schedule_drains() -> int:
    """A drain job for every enabled endpoint with deliveries due and none of its own
    still to run. Returns how many were recorded. One drain per endpoint: several, each
    claiming its own deliveries, were measured slower (bench/webhooks.py), their claims
    and commits contending for the same rows."""
    with transaction() as session:
        endpoint_ids = session.scalars(
            select(WebhookEndpoint.id).where(
                WebhookEndpoint.enabled.is_(True),
                WebhookEndpoint.deleted_at.is_(None),
                exists().where(WebhookDelivery.endpoint_id == WebhookEndpoint.id, _due()),
                ~has_unfinished_job(jobs.DELIVER_WEBHOOK, "endpoint_id", WebhookEndpoint.id),
            )
        ).all()
        record_jobs(session, jobs.DELIVER_WEBHOOK, [{"endpoint_id": i} for i in endpoint_ids])
    return len(endpoint_ids)


def release_waiting(limit: int = DISPATCH_BATCH) -> int:
    """Make due every waiting delivery with no earlier one of its object left unfinished
    for its endpoint, or that waited longer than the order bound. Returns how many."""
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
        _make_due(session, list(due))
    if due:
        log.info("webhook.deliveries_released", count=len(due))
    return len(due)


def _make_due(session: Session, delivery_ids: list[str]) -> None:
    """These waiting deliveries are pending now, due at once (the next drain sends them)."""
    if not delivery_ids:
        return
    for delivery in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
    ):
        delivery.state = rules.require_transition(delivery.state, DeliveryState.PENDING).value
        delivery.next_attempt_at = None


def _release_next(session: Session, endpoint_id: str, object_ids: set[str]) -> None:
    """Deliveries of these objects ended: the next waiting one of each may go now."""
    if not object_ids:
        return
    following = session.execute(
        select(WebhookDelivery.object_id, WebhookDelivery.id, WebhookDelivery.state)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.object_id.in_(sorted(object_ids)),
            WebhookDelivery.state.in_(_UNFINISHED),
        )
        .order_by(WebhookDelivery.object_id, WebhookDelivery.sequence)
        .with_for_update()
    ).all()
    first: dict[str, Any] = {}
    for row in following:
        first.setdefault(row.object_id, row)
    _make_due(session, [row.id for row in first.values() if row.state == DeliveryState.WAITING])


# --- the drain job -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outgoing:
    delivery_id: str
    object_id: str
    sequence: int
    tries: int  # the delivery's attempts when claimed: the fencing token of this try
    body: bytes
    event_id: str
    event_type: str


@dataclass(frozen=True)
class _Batch:
    url: str
    secrets: list[str]
    items: list[_Outgoing]


@dataclass(frozen=True)
class _Sent:
    outgoing: _Outgoing
    response: WebhookResponse
    outcome: TryOutcome


def deliver(endpoint_id: str, *, work: JobWork | None = None) -> int:
    """The `webhooks.deliver` job: send an endpoint's due deliveries, batch after batch,
    until none is due or its time is up (then a fresh job goes on). Returns how many
    tries it made."""
    work = work or JobWork.outside_a_job()
    deadline = time.monotonic() + DRAIN_BUDGET_SECONDS
    size = FIRST_BATCH
    tries = 0
    with ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="webhook") as pool:
        while True:
            asked = size
            batch = _claim(endpoint_id, asked)
            if batch is None:
                return tries
            began = time.monotonic()
            sent = _post_all(work, batch, pool, deadline)
            _record(endpoint_id, batch, sent)
            tries += len(sent)
            quick = time.monotonic() - began < QUICK_BATCH_SECONDS
            size = min(DRAIN_BATCH, size * 2) if quick else FIRST_BATCH
            if len(batch.items) < asked and len(sent) == len(batch.items):
                return tries  # fewer were due than it asked for, and all went
            if time.monotonic() > deadline:
                with transaction() as session:
                    record_job(session, jobs.DELIVER_WEBHOOK, endpoint_id=endpoint_id)
                return tries


def _claim(endpoint_id: str, size: int) -> _Batch | None:
    """The endpoint's due deliveries, in sequence order, claimed for one claim lease."""
    with transaction() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or not endpoint.enabled or endpoint.deleted_at is not None:
            return None  # its deliveries wait, pending, until it is enabled again
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts, Event)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id, _due())
            .order_by(WebhookDelivery.sequence)
            .limit(size)
            .with_for_update(of=WebhookDelivery, skip_locked=True)
        ).all()
        if not rows:
            return None
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_([row.id for row in rows]))
            .values(next_attempt_at=func.now() + claim_lease())
        )
        items = [
            _Outgoing(
                row.id,
                row.Event.object_id,
                row.Event.sequence,
                row.attempts,
                json.dumps(envelope(row.Event), separators=(",", ":")).encode(),
                row.Event.id,
                row.Event.type,
            )
            for row in rows
        ]
        return _Batch(endpoint.url, signing_secrets(session, endpoint_id, datetime.now(UTC)), items)


def _post_all(
    work: JobWork, batch: _Batch, pool: ThreadPoolExecutor, deadline: float
) -> list[_Sent]:
    """POST the batch, a few at a time; each object's deliveries one after the other in
    sequence order, stopping at its first that is not delivered (the rest wait for it).
    Nothing starts after `deadline`: what is left is due again at once."""
    by_object: dict[str, list[_Outgoing]] = {}
    for item in batch.items:
        by_object.setdefault(item.object_id, []).append(item)

    def send_in_order(items: list[_Outgoing]) -> list[_Sent]:
        sent: list[_Sent] = []
        for item in items:
            if time.monotonic() > deadline:
                break
            one = _post(work, batch, item)
            sent.append(one)
            if one.outcome is not TryOutcome.DELIVERED:
                break
        return sent

    return [one for group in pool.map(send_in_order, by_object.values()) for one in group]


def _post(work: JobWork, batch: _Batch, item: _Outgoing) -> _Sent:
    headers = {
        SIGNATURE_HEADER: signature_header(item.body, batch.secrets, int(time.time())),
        EVENT_ID_HEADER: item.event_id,
        EVENT_TYPE_HEADER: item.event_type,
    }
    try:
        response = work.gateways.webhooks.post(batch.url, item.body, headers)
    except UnsafeUrl as exc:
        # The name resolves elsewhere now: nothing was sent.
        refused = WebhookResponse(status=None, body_excerpt="", duration_ms=0, error=str(exc))
        return _Sent(item, refused, TryOutcome.REFUSED)
    return _Sent(item, response, rules.outcome_of(response.status))


# A batch's changes to its deliveries in one statement, whatever its size: the values come
# as arrays, unnested in step.
_deliveries = WebhookDelivery.__table__
_TRIED = (
    func.unnest(
        bindparam("b_ids", type_=ARRAY(String())),
        bindparam("b_states", type_=ARRAY(String())),
        bindparam("b_statuses", type_=ARRAY(Integer())),
        bindparam("b_errors", type_=ARRAY(Text())),
        bindparam("b_next", type_=ARRAY(DateTime(timezone=True))),
        bindparam("b_first", type_=ARRAY(DateTime(timezone=True))),
        bindparam("b_finished", type_=ARRAY(DateTime(timezone=True))),
    )
    .table_valued("id", "state", "status", "error", "next", "first", "finished")
    .render_derived(name="tried")
)
_RECORD_TRIES = (
    update(_deliveries)
    .where(_deliveries.c.id == _TRIED.c.id)
    .values(
        state=_TRIED.c.state,
        attempts=_deliveries.c.attempts + 1,
        last_status=_TRIED.c.status,
        last_error=_TRIED.c.error,
        next_attempt_at=_TRIED.c.next,
        first_attempt_at=_TRIED.c.first,
        finished_at=_TRIED.c.finished,
    )
)


def _record(endpoint_id: str, batch: _Batch, sent: list[_Sent]) -> None:
    """One transaction for the batch's tries. A delivery whose try count moved since the
    claim was taken over by another drain: that one records it."""
    settings = context.settings()
    retry_for = timedelta(seconds=settings.webhook_retry_for_seconds)
    first_wait = timedelta(seconds=settings.webhook_retry_first_seconds)
    longest_wait = timedelta(seconds=settings.webhook_retry_longest_seconds)
    with transaction() as session:
        now = session.scalar(select(func.now()))
        assert now is not None
        claimed = {item.delivery_id: item for item in batch.items}
        ours = {
            row.id: row
            for row in session.execute(
                select(
                    WebhookDelivery.id,
                    WebhookDelivery.attempts,
                    WebhookDelivery.state,
                    WebhookDelivery.first_attempt_at,
                )
                .where(WebhookDelivery.id.in_(list(claimed)))
                .with_for_update()
            )
            if row.attempts == claimed[row.id].tries and row.state == DeliveryState.PENDING
        }
        tried = [one for one in sent if one.outgoing.delivery_id in ours]
        changes: list[tuple[str, str, int | None, str | None, Any, Any, Any]] = []
        ended: set[str] = set()
        failures: list[str] = []
        gone = False
        for one in tried:
            row = ours[one.outgoing.delivery_id]
            first = row.first_attempt_at or now
            status = one.response.status
            if one.outcome is TryOutcome.DELIVERED:
                state, error, due = DeliveryState.SUCCEEDED, None, None
            else:
                error = one.response.error or f"HTTP {status}"
                failures.append(error)
                due = None
                if one.outcome is TryOutcome.GONE:
                    gone = True
                    state, error = DeliveryState.FAILED, "the endpoint answered 410 Gone"
                elif rules.gives_up(first, now, retry_for):
                    state, error = DeliveryState.FAILED, f"gave up: {error}"
                else:
                    state = DeliveryState.PENDING
                    due = now + rules.retry_delay(
                        row.attempts + 1, base=first_wait, cap=longest_wait
                    )
            state = rules.require_transition(row.state, state)
            ended_now = state is not DeliveryState.PENDING
            if ended_now:
                ended.add(one.outgoing.object_id)
            changes.append(
                (row.id, state.value, status, error, due, first, now if ended_now else None)
            )
        if tried:
            session.execute(
                insert(WebhookAttempt.__table__),
                [
                    {
                        "delivery_id": one.outgoing.delivery_id,
                        "outcome": one.outcome.value,
                        "status_code": one.response.status,
                        "duration_ms": one.response.duration_ms,
                        "error": one.response.error,
                        "response_excerpt": one.response.body_excerpt or None,
                    }
                    for one in tried
                ],
            )
            columns = list(zip(*changes, strict=True))
            session.execute(
                _RECORD_TRIES,
                {
                    name: list(values)
                    for name, values in zip(
                        ("b_ids", "b_states", "b_statuses", "b_errors", "b_next", "b_first"),
                        columns,
                        strict=False,
                    )
                }
                | {"b_finished": list(columns[6])},
            )
        # Claimed but not sent (behind a failed one of the same object, or past the
        # drain's budget): due again at once.
        unsent = set(ours) - {one.outgoing.delivery_id for one in tried}
        if unsent:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(sorted(unsent)))
                .values(next_attempt_at=None)
            )
        _release_next(session, endpoint_id, ended)
        _follow_endpoint(
            session,
            endpoint_id,
            now,
            delivered=len(tried) > len(failures),
            failures=failures,
            gone=gone,
        )
    for one in tried:
        WEBHOOK_DELIVERIES.labels(outcome=one.outcome.value).inc()
    log.info(
        "webhook.batch_recorded",
        endpoint_id=endpoint_id,
        tries=len(tried),
        failed=len(failures),
        superseded=len(sent) - len(tried),
    )


def _follow_endpoint(
    session: Session,
    endpoint_id: str,
    now: datetime,
    *,
    delivered: bool,
    failures: list[str],
    gone: bool,
) -> None:
    """The endpoint's health after a batch: a delivered try clears its failing streak (a
    write only when there is one); failures start it, and disable the endpoint once it
    lasted too long; a 410 disables it at once."""
    if delivered and not failures:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failing_since.is_not(None))
            .values(failing_since=None)
        )
        return
    if not failures:
        return
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    assert endpoint is not None
    if delivered:
        endpoint.failing_since = None
    else:
        endpoint.failing_since = endpoint.failing_since or now
    if gone:
        _disable(session, endpoint, "the endpoint answered 410 Gone")
    elif rules.endpoint_disabled_by_failures(
        endpoint.failing_since,
        now,
        timedelta(seconds=context.settings().webhook_disable_after_seconds),
    ):
        _disable(session, endpoint, f"no delivery succeeded since {endpoint.failing_since}")


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
) -> Page[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """A page of an endpoint's deliveries, newest first, each with its tries in order:
    two statements whatever the page's length."""
    existing(db.session(), endpoint_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    page = paginate(query, WebhookDelivery.id, limit, starting_after)
    tries: dict[str, list[WebhookAttempt]] = {d.id: [] for d in page.items}
    if tries:
        for attempt in db.session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(tries)))
            .order_by(WebhookAttempt.id)
        ):
            tries[attempt.delivery_id].append(attempt)
    return Page([(d, tries[d.id]) for d in page.items], page.has_more)


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
            existing(session, delivery.endpoint_id, param="endpoint")
            endpoint_id = delivery.endpoint_id
            chosen = [delivery]
        else:
            if endpoint_id is None:
                raise ValueError("replay takes a delivery, or an endpoint and a range")
            endpoint = existing(session, endpoint_id, param="endpoint")
            chosen = _deliveries_in_range(session, endpoint, since, until)
        replayed = [d for d in chosen if d.state not in _UNFINISHED]
        for delivery in replayed:
            # Waiting, as a new delivery behind an earlier one: released just below in
            # sequence order, each object's next once its previous one ended.
            delivery.state = rules.require_transition(delivery.state, DeliveryState.WAITING).value
            delivery.first_attempt_at = None
            delivery.finished_at = None
            delivery.next_attempt_at = None
    release_waiting()
    schedule_drains()
    log.info("webhook.replayed", endpoint_id=endpoint_id, deliveries=len(replayed))
    return [d.id for d in replayed]


def _deliveries_in_range(
    session: Session, endpoint: WebhookEndpoint, since: datetime | None, until: datetime | None
) -> list[WebhookDelivery]:
    endpoint_id = endpoint.id
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
