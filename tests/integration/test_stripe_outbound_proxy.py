"""Stripe calls honour the environment's proxy (HTTP_PROXY / HTTPS_PROXY, NO_PROXY), read
once when the gateway is made rather than on every call: checked against a real forward
proxy in front of the emulator, which records the requests it carried."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from billing.adapters.stripe_gateway import StripeSdkGateway


class _ForwardProxy(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.carried: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _ForwardProxy

    def _forward(self) -> None:
        # A forward proxy is asked for the absolute URL.
        self.server.carried.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")
        }
        upstream = urllib.request.Request(
            self.path, data=body, headers=headers, method=self.command
        )
        try:
            with urllib.request.urlopen(upstream, timeout=10) as answer:
                status, content, answer_headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            status, content, answer_headers = error.code, error.read(), error.headers
        self.send_response(status)
        for name, value in answer_headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def forward_proxy() -> Iterator[_ForwardProxy]:
    proxy = _ForwardProxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def _clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_stripe_calls_go_through_the_proxy_the_environment_names(
    localstripe, forward_proxy, monkeypatch
):
    _clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    gateway = StripeSdkGateway("sk_test_local", localstripe.url)
    # Read when the gateway was made: a later change of the environment is not followed.
    monkeypatch.delenv("HTTP_PROXY")

    customer_id = gateway.create_customer(
        name="Proxied", email="p@example.com", metadata={}, idempotency_key="proxied-1"
    )

    assert customer_id.startswith("cus_")
    assert forward_proxy.carried == [f"POST {localstripe.url}/v1/customers"]


def test_a_host_no_proxy_names_is_called_directly(localstripe, forward_proxy, monkeypatch):
    _clear_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    gateway = StripeSdkGateway("sk_test_local", localstripe.url)

    customer_id = gateway.create_customer(
        name="Direct", email="d@example.com", metadata={}, idempotency_key="direct-1"
    )

    assert customer_id.startswith("cus_")
    assert forward_proxy.carried == []
