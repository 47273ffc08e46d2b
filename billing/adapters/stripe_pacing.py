"""Stripe's rate limits, kept by every process together.

Stripe answers 429 beyond a rate per account (about 100 operations a second in live mode,
far fewer in test mode). Every web process and worker that calls Stripe takes its turn
from one budget in Redis, so that a billing run for tens of thousands of subscriptions,
spread over many workers, stays under the limit instead of discovering it. A 429 that
comes anyway (another system on the same account, a lock on one object) is retried here
after the advised wait: Stripe did not act on it, so retrying is safe, and the caller
never sees it as an unknown outcome.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import redis
import requests
import stripe

from billing.platform.logging import get_logger

log = get_logger(__name__)

PACING_KEY = "billing:stripe:pacing"

# The generic cell rate algorithm, by reservation: each call takes the next free slot in
# one shared schedule (its theoretical arrival time) and is told how long to wait for it.
# Redis's own clock, so that processes on machines whose clocks differ share one schedule.
_RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return tat - now
"""


class StripePacer:
    """One Stripe call at a time per 1/rate seconds, across every process on this Redis."""

    def __init__(self, redis_url: str, requests_per_second: float) -> None:
        self.requests_per_second = requests_per_second
        self._interval_us = int(1_000_000 / requests_per_second)
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._reserve = self._redis.register_script(_RESERVE)
        self._warned = False

    def wait_for_turn(self) -> float:
        """Sleep until this call's slot; returns the seconds waited. Without Redis, calls
        go unpaced (Stripe's 429s are still retried), logged once per outage."""
        try:
            wait_us = int(self._reserve(keys=[PACING_KEY], args=[self._interval_us]))
        except redis.RedisError as exc:
            if not self._warned:
                self._warned = True
                log.warning("stripe.pacing_unavailable", error=str(exc))
            return 0.0
        self._warned = False
        wait = max(0, wait_us) / 1_000_000
        if wait:
            time.sleep(wait)
        return wait


class PacedRequestsClient(stripe.RequestsClient):
    """The SDK's HTTP client, taking its turn before each request and retrying a 429
    after the advised wait, for up to `rate_limited_budget` seconds of waiting in all;
    past that the 429 reaches the caller (as StripeRateLimited), whose job comes back
    later without spending an attempt."""

    def __init__(
        self,
        *,
        timeout: float,
        pacer: StripePacer | None,
        rate_limited_budget: float,
        api_base: str = stripe.DEFAULT_API_BASE,
    ) -> None:
        # The environment's proxy for Stripe (HTTPS_PROXY, NO_PROXY), read once: requests
        # would otherwise read the whole environment again on every call.
        proxies = requests.utils.get_environ_proxies(api_base)
        proxy = {k: v for k, v in proxies.items() if k in ("http", "https")}
        super().__init__(timeout=timeout, proxy=proxy or None)  # type: ignore[arg-type]
        self._pacer = pacer
        self._budget = rate_limited_budget

    def _thread_session(self) -> None:
        # The SDK's one session per thread, made here so that it leaves the environment
        # alone (the proxy above; the CA bundle is the SDK's own on every call).
        if getattr(self._thread_local, "session", None) is None:
            session = requests.Session()
            session.trust_env = False
            self._thread_local.session = session

    def request(  # type: ignore[override]
        self, method: str, url: str, headers: Mapping[str, str] | None, post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        self._thread_session()
        waited = 0.0
        retries = 0
        while True:
            if self._pacer is not None:
                self._pacer.wait_for_turn()
            content, status, response_headers = super().request(method, url, headers, post_data)
            if status != 429:
                return content, status, response_headers
            delay = advised_wait(response_headers, retries)
            if waited + delay > self._budget:
                _count_rate_limited("passed_on")
                log.warning("stripe.rate_limited_passed_on", method=method, waited=waited)
                return content, status, response_headers
            _count_rate_limited("retried")
            time.sleep(delay)
            waited += delay
            retries += 1


def _count_rate_limited(outcome: str) -> None:
    # Imported here, not with the module: the app's package imports this adapter, and the
    # web's gunicorn config must set up multiprocess metrics before any metric exists.
    from billing.platform.metrics import STRIPE_RATE_LIMITED

    STRIPE_RATE_LIMITED.labels(outcome=outcome).inc()


# Without Stripe's advice: a quarter second doubling, at most four, with jitter so that
# many workers limited at once do not come back together.
_FIRST_WAIT = 0.25
_LONGEST_WAIT = 4.0


def advised_wait(headers: Mapping[str, str], retries: int) -> float:
    """Seconds to wait before asking again: Retry-After when Stripe gives it."""
    advice = _header(headers, "Retry-After")
    if advice is not None:
        try:
            return max(0.0, float(advice))
        except ValueError:
            pass
    ceiling = min(_LONGEST_WAIT, _FIRST_WAIT * 2**retries)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
