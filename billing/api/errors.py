"""Every error is JSON: {"error": {"code", "message", "param"}} with a stable code."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from billing.platform.errors import ServiceError
from billing.platform.logging import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        details: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details
        # Seconds, sent as Retry-After: when the refusal ends (a limit's window).
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "param": self.param}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class RequestInvalid(ApiError):
    """The request was refused before any use case ran: nothing changed, nothing is stored
    under its Idempotency-Key (Stripe's rule), so a corrected retry may reuse the key."""


_PYDANTIC_CODES = {
    "extra_forbidden": "parameter_unknown",
    "missing": "parameter_missing",
    "json_invalid": "invalid_json",
    "json_type": "invalid_json",
    "currency_not_supported": "currency_not_supported",
    # Our own validators' refusals, each with its own code.
    "invalid_characters": "invalid_characters",
    "too_many_lines": "too_many_lines",
    "country_unknown": "country_unknown",
}


def from_validation_error(exc: ValidationError, *, location: str = "body") -> RequestInvalid:
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        param = ".".join(str(p) for p in err["loc"]) or None
        details.append(
            {
                "code": _PYDANTIC_CODES.get(err["type"], "parameter_invalid"),
                "param": param,
                "message": err["msg"],
            }
        )
    first = details[0]
    where = f" in {location}" if location != "body" else ""
    param = first["param"]
    message = f"{param}: {first['message']}" if param else str(first["message"])
    return RequestInvalid(400, str(first["code"]), message + where, param=param, details=details)


def from_service_error(exc: ServiceError) -> ApiError:
    retry_after = getattr(exc, "retry_after", None)
    return ApiError(exc.status, exc.code, exc.message, param=exc.param, retry_after=retry_after)


def error_response(error: ApiError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


_HTTP_CODES = {
    404: "route_not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc)

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return error_response(from_service_error(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "invalid_request" if status < 500 else "api_error")
        response = error_response(ApiError(status, code, exc.description or exc.name))
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("api.unhandled_error")
        return error_response(
            ApiError(500, "api_error", "An internal error occurred; it has been logged.")
        )
