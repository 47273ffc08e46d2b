"""/v1/webhook_endpoints: where events are pushed, signed (admin keys only)."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint

from billing.api.endpoint import ViewResult, endpoint
from billing.views import schemas
from billing.views.serializers import webhook_delivery_out, webhook_endpoint_out
from billing.webhooks import deliveries, endpoints

bp = Blueprint("webhook_endpoints", __name__, url_prefix="/v1/webhook_endpoints")


@endpoint(
    bp,
    "",
    "POST",
    summary="Create a webhook endpoint (its signing secret is shown this once)",
    body=schemas.WebhookEndpointCreate,
    response=schemas.WebhookEndpointOut,
    admin_only=True,
    errors=(400, 403, 409, 422),
)
def create_endpoint(body: schemas.WebhookEndpointCreate) -> ViewResult:
    created, secret = endpoints.create_endpoint(
        endpoints.EndpointFields(
            url=body.url,
            event_types=body.enabled_events,
            description=body.description,
            enabled=body.enabled,
        )
    )
    return webhook_endpoint_out(created, secret=secret), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List webhook endpoints",
    query=schemas.ListQuery,
    response=schemas.WebhookEndpointList,
    admin_only=True,
    errors=(400, 403),
)
def list_endpoints(query: schemas.ListQuery) -> ViewResult:
    page = endpoints.list_endpoints(limit=query.limit, starting_after=query.starting_after)
    return schemas.WebhookEndpointList(
        data=[webhook_endpoint_out(e) for e in page.items], has_more=page.has_more
    ), 200


@endpoint(
    bp,
    "/<endpoint_id>",
    "GET",
    summary="Retrieve a webhook endpoint",
    response=schemas.WebhookEndpointOut,
    admin_only=True,
    errors=(403, 404),
)
def get_endpoint(endpoint_id: str) -> ViewResult:
    return webhook_endpoint_out(endpoints.get_endpoint(endpoint_id)), 200


@endpoint(
    bp,
    "/<endpoint_id>",
    "PATCH",
    summary="Update a webhook endpoint (enabling it again forgets its failures)",
    body=schemas.WebhookEndpointUpdate,
    response=schemas.WebhookEndpointOut,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def update_endpoint(endpoint_id: str, body: schemas.WebhookEndpointUpdate) -> ViewResult:
    changes = body.model_dump(exclude_unset=True)
    return webhook_endpoint_out(endpoints.update_endpoint(endpoint_id, changes)), 200


@endpoint(
    bp,
    "/<endpoint_id>",
    "DELETE",
    summary="Delete a webhook endpoint (nothing more is sent to it)",
    response=schemas.WebhookEndpointOut,
    admin_only=True,
    errors=(403, 404),
)
def delete_endpoint(endpoint_id: str) -> ViewResult:
    return webhook_endpoint_out(endpoints.delete_endpoint(endpoint_id)), 200


@endpoint(
    bp,
    "/<endpoint_id>/roll_secret",
    "POST",
    summary="Roll the signing secret; the current one keeps signing for the overlap",
    body=schemas.RollSecret,
    response=schemas.WebhookEndpointOut,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def roll_secret(endpoint_id: str, body: schemas.RollSecret | None) -> ViewResult:
    overlap = (
        timedelta(seconds=body.overlap_seconds)
        if body is not None and body.overlap_seconds is not None
        else None
    )
    rolled, secret = endpoints.roll_secret(endpoint_id, overlap)
    return webhook_endpoint_out(rolled, secret=secret), 200


@endpoint(
    bp,
    "/<endpoint_id>/deliveries",
    "GET",
    summary="List an endpoint's deliveries, each with its tries",
    query=schemas.WebhookDeliveryListQuery,
    response=schemas.WebhookDeliveryList,
    admin_only=True,
    errors=(400, 403, 404),
)
def list_deliveries(endpoint_id: str, query: schemas.WebhookDeliveryListQuery) -> ViewResult:
    page = deliveries.list_deliveries(
        endpoint_id, state=query.state, limit=query.limit, starting_after=query.starting_after
    )
    return schemas.WebhookDeliveryList(
        data=[webhook_delivery_out(d, tries) for d, tries in page.items],
        has_more=page.has_more,
    ), 200
