"""One decorator per route: authentication, parsing, idempotency, shaping, and the OpenAPI
entry, all from the same declaration so that the document cannot drift from the code."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ValidationError

from billing.access.api_keys import Principal
from billing.api.errors import ApiError, RequestInvalid, from_service_error, from_validation_error
from billing.extensions import db
from billing.platform import context, ledger
from billing.platform.errors import ServiceError
from billing.platform.ledger import Claim
from billing.platform.unit_of_work import transaction

# Longer than gunicorn's worker timeout: a request still holding its key is alive.
IDEMPOTENT_REQUEST_LEASE = timedelta(seconds=60)
# Our prefixes run from "in" to "promo" (promotion codes, as Stripe names them).
_PATH_ID = re.compile(r"[a-z]{2,5}_[0-9a-z]{1,36}")
MAX_IDEMPOTENCY_KEY_LENGTH = 255

ViewResult = tuple[BaseModel | None, int] | Response


@dataclass(frozen=True)
class EndpointSpec:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    admin_only: bool
    public: bool
    errors: tuple[int, ...]
    # A view that answers something other than JSON (a PDF) names its media type, and
    # the other non-error answers it may give (status -> description, schema or None).
    media_type: str = "application/json"
    other_answers: tuple[tuple[int, str, type[BaseModel] | None], ...] = ()


ENDPOINTS: list[EndpointSpec] = []


def principal() -> Principal:
    found: Principal = g.principal
    return found


def customer_scope() -> str | None:
    """None for an admin key; the key's own customer otherwise."""
    return principal().customer_id


def _parse_body(model: type[BaseModel] | None) -> BaseModel | None:
    raw = request.get_data(cache=True)
    if model is None:
        if raw.strip() in (b"", b"{}"):
            return None
        raise RequestInvalid(400, "parameter_unknown", "this endpoint takes no parameters")
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise from_validation_error(exc) from exc


def _parse_query(model: type[BaseModel] | None) -> BaseModel | None:
    if model is None:
        return None
    args: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if len(values) > 1:
            raise RequestInvalid(400, "parameter_invalid", f"{key} given more than once", param=key)
        args[key] = values[0]
    try:
        return model.model_validate(args, strict=False)
    except ValidationError as exc:
        raise from_validation_error(exc, location="query") from exc


def _fingerprint() -> str:
    raw = request.get_data(cache=True)
    try:
        canonical = json.dumps(json.loads(raw or b"{}"), sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):
        canonical = raw.decode("utf-8", "replace")
    material = f"{request.method} {request.path}\n{canonical}"
    return hashlib.sha256(material.encode()).hexdigest()


def _shape(result: ViewResult) -> tuple[Any, int]:
    if isinstance(result, Response):
        raise TypeError("only GET views may answer with a ready Response; others store JSON")
    model, status = result
    return (model.model_dump(mode="json") if model is not None else None), status


def _json(body: Any, status: int) -> Response:
    response = jsonify(body) if body is not None else Response(status=status)
    response.status_code = status
    return response


def _key_in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still running; retry later",
        param="Idempotency-Key",
    )


def _run_idempotently(view: Callable[[], ViewResult], atomic: bool) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        if not atomic:
            return _json(*_shape(view()))
        # As with a key: the response is shaped inside the change's transaction, from the
        # rows it just wrote, rather than read back from PostgreSQL after the commit.
        with transaction():
            body, status = _shape(view())
        return _json(body, status)
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise RequestInvalid(
            400,
            "idempotency_key_invalid",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
            param="Idempotency-Key",
        )
    keep_for = timedelta(hours=context.settings().idempotency_key_ttl_hours)
    claimed = ledger.claim(
        f"api:{principal().api_key_id}",
        key,
        _fingerprint(),
        lease=IDEMPOTENT_REQUEST_LEASE,
        keep_for=keep_for,
    )
    if claimed.claim is Claim.MISMATCH:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with different parameters or another endpoint",
            param="Idempotency-Key",
        )
    if claimed.claim is Claim.IN_PROGRESS:
        raise _key_in_use()
    if claimed.claim is Claim.DONE:
        response = _json(claimed.response_body, claimed.response_status or 200)
        response.headers["Idempotent-Replayed"] = "true"
        return response

    try:
        if atomic:
            # The change and its stored response commit together: no crash can leave one
            # without the other, so a retry never performs the request twice. If a later
            # request took the key over meanwhile, complete() raises and all rolls back.
            with transaction():
                body, status = _shape(view())
                ledger.complete(claimed, "succeeded", response_status=status, response_body=body)
        else:
            body, status = _shape(view())
            with contextlib.suppress(ledger.LeaseLost), transaction():
                ledger.complete(claimed, "succeeded", response_status=status, response_body=body)
    except ledger.LeaseLost as exc:
        raise _key_in_use() from exc
    except RequestInvalid:
        db.session.rollback()
        ledger.release(claimed)
        raise
    except (ApiError, ServiceError) as exc:
        db.session.rollback()
        error = exc if isinstance(exc, ApiError) else from_service_error(exc)
        if error.status >= 500 or getattr(exc, "retryable", False):
            ledger.release(claimed)  # "not now" is no answer to replay for a day
            raise
        with contextlib.suppress(ledger.LeaseLost), transaction():
            ledger.complete(
                claimed, "failed", response_status=error.status, response_body=error.body()
            )
        raise
    except BaseException:
        # Whatever was not committed rolled back; release() deletes only a claim of this
        # attempt that is still running, never an outcome already recorded.
        db.session.rollback()
        ledger.release(claimed)
        raise
    return _json(body, status)


def endpoint(
    blueprint: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    response: type[BaseModel] | None,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    status: int = 200,
    admin_only: bool = False,
    public: bool = False,
    atomic: bool = True,
    errors: tuple[int, ...] = (),
    media_type: str = "application/json",
    other_answers: tuple[tuple[int, str, type[BaseModel] | None], ...] = (),
) -> Callable[[Callable[..., ViewResult]], Callable[..., Response]]:
    prefix = blueprint.url_prefix or ""
    path = prefix + rule.replace("<", "{").replace(">", "}")
    ENDPOINTS.append(
        EndpointSpec(
            method=method.lower(),
            path=path,
            summary=summary,
            tag=blueprint.name,
            body=body,
            query=query,
            response=response,
            status=status,
            admin_only=admin_only,
            public=public,
            errors=errors,
            media_type=media_type,
            other_answers=other_answers,
        )
    )

    def decorate(view: Callable[..., ViewResult]) -> Callable[..., Response]:
        @functools.wraps(view)
        def handle(**path_args: Any) -> Response:
            for name, value in path_args.items():
                if not _PATH_ID.fullmatch(value):
                    # Not an id we could ever have issued: the same answer as a missing one.
                    kind = name.removesuffix("_id")
                    raise ApiError(404, "resource_missing", f"No such {kind}", param=name)
            if admin_only and not principal().is_admin:
                raise ApiError(403, "permission_denied", "this action needs an admin API key")

            def call() -> ViewResult:
                kwargs = dict(path_args)
                if body is not None or method == "POST":
                    parsed = _parse_body(body)
                    if body is not None:
                        kwargs["body"] = parsed
                if query is not None:
                    kwargs["query"] = _parse_query(query)
                return view(**kwargs)

            if method == "POST":
                return _run_idempotently(call, atomic)
            result = call()
            if isinstance(result, Response):
                return result
            return _json(*_shape(result))

        blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=handle, methods=[method])
        return handle

    return decorate
