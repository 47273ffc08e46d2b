"""Request ids, authentication and rate limits, around every request."""

from __future__ import annotations

import re

from flask import Flask, Response, g, request

from billing.access.api_keys import authenticate
from billing.api.errors import ApiError
from billing.api.rate_limits import init_rate_limits
from billing.platform.ids import new_id
from billing.platform.logging import bind_context, clear_context

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Outside API-key auth; /metrics asks for METRICS_TOKEN when one is set (billing/api/metrics.py).
PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/metrics")


def register_middleware(app: Flask) -> None:
    @app.before_request
    def _bind_request_id() -> None:
        clear_context()
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else new_id("req")
        bind_context(request_id=g.request_id, method=request.method, path=request.path)

    @app.before_request
    def _identify_api_key() -> None:
        if not request.path.startswith("/v1/") or request.path.startswith("/v1/webhooks/"):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            g.authentication_error = ApiError(
                401,
                "authentication_required",
                "send your API key as 'Authorization: Bearer <key>'",
            )
            return
        principal = authenticate(secret.strip())
        if principal is None:
            g.authentication_error = ApiError(
                401, "invalid_api_key", "the API key is unknown or revoked"
            )
            return
        g.principal = principal
        bind_context(api_key_id=principal.api_key_id)

    # Between the two: a request is counted under its key, or under its address when it
    # names no valid key, so that a flood of bad keys is refused too.
    app.extensions["billing.limiter"] = init_rate_limits(app, app.config["BILLING_SETTINGS"])

    @app.before_request
    def _refuse_unauthenticated() -> None:
        error: ApiError | None = g.get("authentication_error")
        if error is not None:
            raise error

    @app.after_request
    def _return_request_id(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        clear_context()
