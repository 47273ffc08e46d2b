"""The event log: recorded with each change, read by the API, pruned by beat.

A use case records an event with `record` inside its transaction; the event's row is
written just before that transaction commits, with a snapshot of its object as the API
shows it at that moment, so that an event exists exactly when its change committed.
The snapshots are shaped by the API layer, which registers one loader per object type
(billing.views.snapshots): the log shows what the API shows, and this module imports no
view code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CTE, String, bindparam, delete, event, func, insert, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, SessionTransaction

from billing.events.rules import EventType
from billing.extensions import db
from billing.models import Event
from billing.platform import context
from billing.platform.errors import NotFound
from billing.platform.ids import new_id
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import before_commit

# Object ids, each with the types of the events recorded about it in this transaction ->
# their snapshots, read in that transaction (a fixed number of statements however many
# ids: a billing run records thousands of events at once). The types let a loader skip
# what cannot exist yet (the emails of an invoice numbered in this very transaction).
SnapshotLoader = Callable[
    [Session, Mapping[str, frozenset[EventType]]], Mapping[str, dict[str, Any]]
]
_LOADERS: dict[str, SnapshotLoader] = {}
# An object (a model, or a stand-in with its attributes) -> its snapshot: for a statement
# that records its change and its event at once, from values it knows before running.
Shape = Callable[[Any], dict[str, Any]]
_SHAPES: dict[str, Shape] = {}
PRUNE_BATCH = 5000


class SnapshotMissing(RuntimeError):
    """An event about an object no loader could show: a bug, and its change rolls back."""


def register_snapshot(object_type: str, loader: SnapshotLoader, shape: Shape | None = None) -> None:
    _LOADERS[object_type] = loader
    if shape is not None:
        _SHAPES[object_type] = shape


def snapshot_of(object_type: str, obj: Any) -> dict[str, Any]:
    shape = _SHAPES.get(object_type)
    if shape is None:
        raise SnapshotMissing(f"no snapshot shape for {object_type} is registered")
    return shape(obj)


_events = Event.__table__


def recorded_with(
    changed: CTE, type_: EventType, *, set_in_sql: Mapping[str, Any] | None = None
) -> CTE:
    """The event of a one-statement change: inserted when `changed` (a CTE returning the
    changed row's `id`) changed a row, and not otherwise. Its parameters come from
    `event_params`; `set_in_sql` replaces snapshot fields with values only the statement
    knows (its now()). The statement must select from the returned CTE for it to run."""
    data: Any = bindparam("b_event_data", type_=JSONB())
    if set_in_sql:
        data = data.op("||")(
            func.jsonb_build_object(
                *(part for key, value in set_in_sql.items() for part in (literal(key), value))
            )
        )
    return (
        insert(_events)
        .from_select(
            ["id", "type", "object_type", "object_id", "customer_id", "data", "request_id"],
            select(
                bindparam("b_event_id", type_=String()),
                literal(type_.value),
                literal(type_.object_type),
                changed.c.id,
                bindparam("b_event_customer_id", type_=String()),
                data,
                bindparam("b_event_request_id", type_=String()),
            ),
        )
        .returning(_events.c.id)
        .cte(f"event_{type_.value.replace('.', '_')}")
    )


def event_params(
    object_type: str, obj: Any, customer_id: str | None, *, recorded: bool = True
) -> dict[str, Any]:
    """The parameters of `recorded_with`'s event, its snapshot shaped from `obj`; given
    `recorded=False` (the statement will insert no event this time), only placeholders."""
    if not recorded:
        return dict.fromkeys(
            ("b_event_id", "b_event_customer_id", "b_event_data", "b_event_request_id")
        )
    return {
        "b_event_id": new_id("evt"),
        "b_event_customer_id": customer_id,
        "b_event_data": snapshot_of(object_type, obj),
        "b_event_request_id": context.current_request_id(),
    }


@dataclass(frozen=True)
class _Recorded:
    type: EventType
    object_id: str
    customer_id: str | None
    request_id: str | None


def record(session: Session, type_: EventType, object_id: str, customer_id: str | None) -> None:
    """Record that `object_id` changed as `type_` says, in the caller's transaction."""
    record_many(session, type_, [(object_id, customer_id)])


def record_many(
    session: Session, type_: EventType, objects: Sequence[tuple[str, str | None]]
) -> None:
    """One event of `type_` per (object id, customer id), in the caller's transaction."""
    if not objects:
        return
    request_id = context.current_request_id()
    before_commit(
        session,
        _write,
        *(
            _Recorded(type_, object_id, customer_id, request_id)
            for object_id, customer_id in objects
        ),
    )


_OFFERED = "events_offered_snapshots"


def offer_snapshot(
    session: Session, object_type: str, object_id: str, snapshot: dict[str, Any]
) -> None:
    """A snapshot of an object as this transaction leaves it, shaped anyway by the caller
    (a response body, built once the change is complete): the object's events of this
    transaction take it instead of reading the object again. Forgotten when the
    transaction ends, committed or not."""
    session.info.setdefault(_OFFERED, {})[(object_type, object_id)] = snapshot


@event.listens_for(Session, "after_transaction_end")
def _forget_offers(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_OFFERED, None)


def _write(session: Session, recorded: list[_Recorded]) -> None:
    session.flush()
    offered: dict[tuple[str, str], dict[str, Any]] = session.info.pop(_OFFERED, {})
    snapshots: dict[str, dict[str, dict[str, Any]]] = {}
    for object_type in {r.type.object_type for r in recorded}:
        types: dict[str, set[EventType]] = {}
        shown = snapshots[object_type] = {}
        for r in recorded:
            if r.type.object_type != object_type:
                continue
            snapshot = offered.get((object_type, r.object_id))
            if snapshot is not None:
                shown[r.object_id] = snapshot
            else:
                types.setdefault(r.object_id, set()).add(r.type)
        if not types:
            continue
        loader = _LOADERS.get(object_type)
        if loader is None:
            raise SnapshotMissing(f"no snapshot loader for {object_type} is registered")
        shown.update(loader(session, {i: frozenset(t) for i, t in sorted(types.items())}))
    rows = []
    for r in recorded:
        data = snapshots[r.type.object_type].get(r.object_id)
        if data is None:
            raise SnapshotMissing(f"{r.type.object_type} {r.object_id} could not be shown")
        rows.append(
            {
                "id": new_id("evt"),
                "type": r.type.value,
                "object_type": r.type.object_type,
                "object_id": r.object_id,
                "customer_id": r.customer_id,
                "data": data,
                "request_id": r.request_id,
            }
        )
    # In the order recorded: the sequence is drawn row by row, so an object's events of
    # one transaction (created, then finalized) keep their order too.
    session.execute(insert(_events), rows)


@dataclass(frozen=True)
class EventFilter:
    type: str | None = None
    object_id: str | None = None
    created_gte: datetime | None = None
    created_lte: datetime | None = None


def list_events(
    *,
    customer_scope: str | None,
    filters: EventFilter,
    limit: int,
    starting_after: str | None,
) -> Page[Event]:
    query = select(Event)
    if customer_scope is not None:
        query = query.where(Event.customer_id == customer_scope)
    if filters.type is not None:
        query = query.where(Event.type == filters.type)
    if filters.object_id is not None:
        query = query.where(Event.object_id == filters.object_id)
    if filters.created_gte is not None:
        query = query.where(Event.created_at >= filters.created_gte)
    if filters.created_lte is not None:
        query = query.where(Event.created_at <= filters.created_lte)
    return paginate(query, Event.id, limit, starting_after)


def get_event(event_id: str, *, customer_scope: str | None) -> Event:
    event = db.session.get(Event, event_id)
    if event is None or (customer_scope is not None and event.customer_id != customer_scope):
        raise NotFound(f"No such event: '{event_id}'", param="id")
    return event


def prune(retention: timedelta, *, batch: int = PRUNE_BATCH) -> int:
    """Delete the events older than `retention` (and, by cascade, their deliveries), in
    batches so that no single transaction holds a year's worth of locks."""
    pruned = 0
    while True:
        oldest = (
            select(Event.id)
            .where(Event.created_at < func.now() - retention)
            .order_by(Event.created_at)
            .limit(batch)
            .scalar_subquery()
        )
        result = db.session.execute(delete(Event).where(Event.id.in_(oldest)))
        db.session.commit()
        count = int(getattr(result, "rowcount", 0) or 0)
        pruned += count
        if count < batch:
            return pruned


def envelope(event: Event) -> dict[str, Any]:
    """An event as the API shows it and as webhooks deliver it."""
    return {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created": int(event.created_at.timestamp()),
        "sequence": event.sequence,
        "customer": event.customer_id,
        "data": {"object_type": event.object_type, "object": event.data},
        "request": {"id": event.request_id},
    }
