"""A real HTTP proxy between the service and the Stripe emulator that can lose answers.

`drop_responses(n, path=...)` makes the next n matching requests reach the emulator (so the
PaymentIntent is created there) while their responses are thrown away: the client's
connection is closed without a byte, exactly like a network that failed after Stripe acted.
`fail_requests(n, status)` answers n requests with an error without forwarding them.

Stripe's rate limits: `rate_limited_ratio` answers that share of requests 429 without
forwarding them, and `max_rate` answers 429 to every request beyond that many a second (a
sliding second), as Stripe does; `arrived_at` keeps when each request came, refused or
not, so that a test can measure the rate the service kept (`busiest_second`).
"""

from __future__ import annotations

import bisect
import http.client
import random
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class StripeProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self._lock = threading.Lock()
        self._drop: list[tuple[str, str, int]] = []  # (method, path prefix, remaining)
        self._fail: list[tuple[str, int, int]] = []  # (path prefix, status, remaining)
        self.drop_ratio = 0.0
        # Seconds to hold every answer to a matching POST after the emulator acted on it.
        self.delay_seconds = 0.0
        self.drop_ratio_path = "/v1/payment_intents"
        self.dropped = 0
        self.forwarded = 0
        self.rate_limited_ratio = 0.0
        self.max_rate = 0.0  # requests a second; 0: no cap
        self.rate_limited = 0  # of which over_rate beyond max_rate, the rest by the share
        self.over_rate = 0
        self.arrived_at: list[float] = []
        self._recent: deque[float] = deque()
        self.received: list[tuple[str, str]] = []  # (method, path with its query), in order
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.received.append((self.command, self.path))
                failure = proxy._take_failure(self.path)
                if failure is None and proxy._rate_limits():
                    failure = 429
                if failure is not None:
                    payload = (
                        b'{"error": {"type": "invalid_request_error", "code": "rate_limit", '
                        b'"message": "Too many requests hit the API too quickly."}}'
                        if failure == 429
                        else b'{"error": {"type": "api_error", "message": "injected"}}'
                    )
                    self.send_response(failure)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.netloc, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                upstream.close()
                with proxy._lock:
                    proxy.forwarded += 1
                if proxy.delay_seconds and self.command == "POST":
                    time.sleep(proxy.delay_seconds)
                if proxy._take_drop(self.command, self.path):
                    # The emulator acted; the answer is lost on its way back.
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> StripeProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def drop_responses(
        self, count: int, *, method: str = "POST", path: str = "/v1/payment_intents"
    ) -> None:
        with self._lock:
            self._drop.append((method, path, count))

    def fail_requests(self, count: int, *, status: int = 500, path: str = "/v1/") -> None:
        with self._lock:
            self._fail.append((path, status, count))

    def _take_drop(self, method: str, path: str) -> bool:
        with self._lock:
            for index, (m, prefix, remaining) in enumerate(self._drop):
                if m == method and path.startswith(prefix) and remaining > 0:
                    self._drop[index] = (m, prefix, remaining - 1)
                    self.dropped += 1
                    return True
            if (
                self.drop_ratio
                and method == "POST"
                and path.startswith(self.drop_ratio_path)
                and random.random() < self.drop_ratio
            ):
                self.dropped += 1
                return True
        return False

    def _rate_limits(self) -> bool:
        """Whether this request is answered 429; if not, it counts as forwarded now."""
        with self._lock:
            now = time.monotonic()
            self.arrived_at.append(now)
            if self.rate_limited_ratio and random.random() < self.rate_limited_ratio:
                self.rate_limited += 1
                return True
            if self.max_rate:
                while self._recent and self._recent[0] <= now - 1.0:
                    self._recent.popleft()
                if len(self._recent) >= self.max_rate:
                    self.rate_limited += 1
                    self.over_rate += 1
                    return True
                self._recent.append(now)
            return False

    def busiest_second(self) -> int:
        """The most requests that came within any one second, refused ones included."""
        times = sorted(self.arrived_at)
        return max(
            (bisect.bisect_right(times, t + 1.0 - 1e-9) - i for i, t in enumerate(times)),
            default=0,
        )

    def _take_failure(self, path: str) -> int | None:
        with self._lock:
            for index, (prefix, status, remaining) in enumerate(self._fail):
                if path.startswith(prefix) and remaining > 0:
                    self._fail[index] = (prefix, status, remaining - 1)
                    return status
        return None
