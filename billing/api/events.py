"""/v1/events: the event log, newest first."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint

from billing.api.endpoint import ViewResult, customer_scope, endpoint
from billing.events import events as service
from billing.events.events import EventFilter, envelope
from billing.views import schemas

bp = Blueprint("events", __name__, url_prefix="/v1/events")


def _time(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


@endpoint(
    bp,
    "",
    "GET",
    summary="List events (a customer key sees its own customer's only)",
    query=schemas.EventListQuery,
    response=schemas.EventList,
    errors=(400,),
)
def list_events(query: schemas.EventListQuery) -> ViewResult:
    page = service.list_events(
        customer_scope=customer_scope(),
        filters=EventFilter(
            type=query.type.value if query.type is not None else None,
            object_id=query.object_id,
            created_gte=_time(query.created_gte),
            created_lte=_time(query.created_lte),
        ),
        limit=query.limit,
        starting_after=query.starting_after,
    )
    return schemas.EventList(
        data=[schemas.EventOut.model_validate(envelope(e)) for e in page.items],
        has_more=page.has_more,
    ), 200


@endpoint(
    bp,
    "/<event_id>",
    "GET",
    summary="Retrieve an event",
    response=schemas.EventOut,
    errors=(404,),
)
def get_event(event_id: str) -> ViewResult:
    event = service.get_event(event_id, customer_scope=customer_scope())
    return schemas.EventOut.model_validate(envelope(event)), 200
