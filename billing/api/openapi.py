"""/openapi.json, built from the same schemas that validate requests, and /docs."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from flask import Blueprint, Response, current_app, render_template
from pydantic import BaseModel

from billing.api.endpoint import ENDPOINTS, EndpointSpec
from billing.views.schemas import ErrorResponse

bp = Blueprint("docs", __name__, template_folder="templates")

_REF = "#/components/schemas/{model}"
_RATE_LIMITED_HEADERS = {
    "Retry-After": {
        "description": "Seconds until the request may succeed",
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed in the window of the limit that was hit",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left in that window (0)",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Reset": {
        "description": "When that window ends, in Unix seconds",
        "schema": {"type": "integer"},
    },
}


def _register(spec: APISpec, model: type[BaseModel], mode: str = "validation") -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    for name, definition in schema.pop("$defs", {}).items():
        if name not in spec.components.schemas:
            spec.components.schema(name, definition)
    name = model.__name__
    if name not in spec.components.schemas:
        spec.components.schema(name, schema)
    return {"$ref": _REF.format(model=name)}


def _query_parameters(spec: APISpec, model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        if name not in spec.components.schemas:
            spec.components.schema(name, definition)
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "schema": prop,
        }
        for name, prop in schema.get("properties", {}).items()
    ]


def _operation(spec: APISpec, endpoint: EndpointSpec) -> dict[str, Any]:
    error_ref = _register(spec, ErrorResponse, mode="serialization")
    parameters: list[dict[str, Any]] = [
        {"name": part.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
        for part in endpoint.path.split("/")
        if part.startswith("{")
    ]
    if endpoint.query is not None:
        parameters += _query_parameters(spec, endpoint.query)
    if endpoint.method == "post":
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
                "description": "Replays the stored response for 24 hours; see the README.",
            }
        )
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": "Success"}
    if endpoint.media_type != "application/json":
        success["content"] = {
            endpoint.media_type: {"schema": {"type": "string", "format": "binary"}}
        }
    elif endpoint.response is not None:
        ref = _register(spec, endpoint.response, mode="serialization")
        success["content"] = {"application/json": {"schema": ref}}
    responses[str(endpoint.status)] = success
    for status, description, model in endpoint.other_answers:
        answer: dict[str, Any] = {"description": description}
        if model is not None:
            schema = _register(spec, model, mode="serialization")
            answer["content"] = {"application/json": {"schema": schema}}
        responses[str(status)] = answer
    statuses = set(endpoint.errors)
    if not endpoint.public:
        statuses.add(401)
    if endpoint.method == "post":
        statuses |= {409, 422}
    statuses.add(429)  # every route here is rate-limited (billing/api/rate_limits.py)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": "Error",
            "content": {"application/json": {"schema": error_ref}},
        }
    responses["429"]["description"] = "Too many requests: retry after Retry-After seconds"
    responses["429"]["headers"] = copy.deepcopy(_RATE_LIMITED_HEADERS)
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "operationId": f"{endpoint.method}_{endpoint.path}".replace("/", "_")
        .replace("{", "")
        .replace("}", ""),
        "parameters": parameters,
        "responses": responses,
    }
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _register(spec, endpoint.body)}},
        }
    if endpoint.public:
        operation["security"] = []
    return operation


def build_openapi() -> dict[str, Any]:
    spec = APISpec(
        title="Billing service API",
        version="1",
        openapi_version="3.1.0",
        info={
            "description": "Customers, invoices and payments. Errors are JSON with a stable code."
        },
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method] = _operation(spec, endpoint)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    document["security"] = [{"bearer": []}]
    return document


@dataclass(frozen=True)
class PublishedDocument:
    """The document and both its renderings, made once per app: they depend only on the
    code, and building them costs far more CPU than serving them."""

    document: dict[str, Any]
    json_body: bytes
    docs_html: str


_EXTENSION = "billing.openapi"
_building = threading.Lock()


def published_document() -> PublishedDocument:
    """Built by the first request that asks (not at start: most processes never serve it),
    then kept on the app; concurrent first requests build it once."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    published: PublishedDocument | None = app.extensions.get(_EXTENSION)
    if published is None:
        with _building:
            published = app.extensions.get(_EXTENSION)
            if published is None:
                document = build_openapi()
                published = PublishedDocument(
                    document=document,
                    json_body=app.json.dumps(document).encode() + b"\n",
                    docs_html=render_template("docs.html", document=document),
                )
                app.extensions[_EXTENSION] = published
    return published


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return Response(published_document().json_body, mimetype="application/json")


@bp.get("/docs")
def docs() -> str:
    return published_document().docs_html
