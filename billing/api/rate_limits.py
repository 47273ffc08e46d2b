"""Rate limits per API key (Flask-Limiter, counted in Redis), so that no one key can take
the API's capacity from the others.

A request is counted under its API key, whichever route it asks for; one that names no
valid key (the OpenAPI document, a missing or unknown key) under the client's address.
Card attaches by a customer key have a tighter budget of their own on top.
Over a limit: 429 `rate_limited` with `Retry-After`, before the view runs, so that nothing
changes and nothing is stored under the request's Idempotency-Key.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Flask, Response, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from billing.access.api_keys import Principal
from billing.api.errors import ApiError, error_response
from billing.config import Settings
from billing.platform.logging import get_logger

log = get_logger(__name__)

# Our own namespace in the shared Redis, apart from Celery's and redbeat's keys.
KEY_PREFIX = "billing:rate-limit"
# Not counted: the health checks come from the load balancer and the container runtime,
# /metrics from Prometheus, and refusing them would only make a healthy task look sick.
# Stripe's webhooks are authenticated by their signature and retried by Stripe for days:
# a 429 there would only delay the events we must process.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
UNLIMITED_PREFIXES = ("/v1/webhooks/",)
CARD_ATTACH_ENDPOINT = "customers.set_payment_method"
# A Redis that stops answering must not hold requests: past this many seconds the call
# fails and the limiter falls back to counting in this process's memory.
REDIS_TIMEOUT_SECONDS = 0.5


def _principal() -> Principal | None:
    found: Principal | None = g.get("principal")
    return found


def _limit_key() -> str:
    principal = _principal()
    if principal is not None:
        return f"key:{principal.api_key_id}"
    return f"address:{get_remote_address() or 'unknown'}"


def _a_hosted_page() -> bool:
    return request.blueprint == "hosted"


def _unlimited() -> bool:
    return request.path in UNLIMITED_PATHS or request.path.startswith(UNLIMITED_PREFIXES)


def init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """Count every request from here on in this app's before_request chain: registered
    after the API key is identified and before a missing one is refused, so that an
    unauthenticated flood is counted too (by address)."""

    def per_key_limit() -> str:
        principal = _principal()
        if principal is not None and not principal.is_admin:
            return settings.api_rate_limit_customer
        # Behind the load balancer many clients may share one address: unauthenticated
        # requests get the larger budget.
        return settings.api_rate_limit

    def not_a_customer_card_attach() -> bool:
        principal = _principal()
        return request.endpoint != CARD_ATTACH_ENDPOINT or principal is None or principal.is_admin

    # Passed on to redis-py, which takes fractions of a second (the annotation says int).
    storage_options: dict[str, Any] = {
        "key_prefix": KEY_PREFIX,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    }
    limiter = Limiter(
        key_func=_limit_key,
        application_limits=[
            # The hosted invoice pages count their requests per link and per address
            # themselves (billing/api/hosted.py), with budgets of their own.
            ApplicationLimit(per_key_limit, scope="api", exempt_when=_a_hosted_page),
            ApplicationLimit(
                settings.card_attach_rate_limit,
                scope="card-attach",
                exempt_when=not_a_customer_card_attach,
            ),
        ],
        storage_uri=settings.redis_url.get_secret_value(),
        storage_options=storage_options,
        # The window starts at a key's first request: cheapest (one Redis call per limit).
        strategy="fixed-window",
        # Fail open: with Redis unreachable, count in memory per process (Flask-Limiter
        # logs the switch as a warning and goes back to Redis once it answers), and should
        # that fail too, serve the request and log the error.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        # Counted headers on every answer would cost another Redis call per request; the
        # 429 carries them.
        headers_enabled=False,
    )
    limiter.request_filter(_unlimited)
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        return rate_limited_response(limiter, exc)

    return limiter


def rate_limited_response(limiter: Limiter, exc: RateLimitExceeded) -> Response:
    item = exc.limit.limit
    now = time.time()
    reset_at = now + item.get_expiry()
    current = limiter.current_limit
    if current is not None:
        try:
            reset_at = current.window.reset_time
        except Exception:
            # Redis went away since the count: the window's whole length is a safe answer.
            log.warning("rate_limit.window_unavailable", exc_info=True)
    # Redis gives the window's end to the second: never say more than its whole length.
    retry_after = min(max(1, math.ceil(reset_at - now)), item.get_expiry())
    principal = _principal()
    who = "this API key" if principal is not None else "this address"
    what = "card attaches" if exc.limit.scope == "card-attach" else "requests"
    log.info("api.rate_limited", limit=str(item), scope=exc.limit.scope)
    response = error_response(
        ApiError(
            429,
            "rate_limited",
            f"too many {what} for {who}: at most {item}; retry after {retry_after} seconds",
            retry_after=retry_after,
        )
    )
    response.headers["X-RateLimit-Limit"] = str(item.amount)
    response.headers["X-RateLimit-Remaining"] = "0"
    response.headers["X-RateLimit-Reset"] = str(math.ceil(reset_at))
    return response
