"""Stripe calls honour the environment's proxy (HTTP_PROXY / HTTPS_PROXY, NO_PROXY), read
once when the gateway is made rather than on every call: checked against a real proxy in
front of the emulator, which records the requests it carried."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing.adapters.stripe_gateway import StripeSdkGateway
from tests.support.stripe_proxy import StripeProxy


@pytest.fixture
def forward_proxy(localstripe) -> Iterator[StripeProxy]:
    proxy = StripeProxy(localstripe.url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_stripe_calls_go_through_the_proxy_the_environment_names(
    localstripe, forward_proxy, monkeypatch
):
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    gateway = StripeSdkGateway("sk_test_local", localstripe.url)
    # Read when the gateway was made: a later change of the environment is not followed.
    monkeypatch.delenv("HTTP_PROXY")

    customer_id = gateway.create_customer(
        name="Proxied", email="p@example.com", metadata={}, idempotency_key="proxied-1"
    )

    assert customer_id.startswith("cus_")
    # A proxy is asked for the absolute address.
    assert forward_proxy.received == [("POST", f"{localstripe.url}/v1/customers")]


def test_a_host_no_proxy_names_is_called_directly(localstripe, forward_proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    gateway = StripeSdkGateway("sk_test_local", localstripe.url)

    customer_id = gateway.create_customer(
        name="Direct", email="d@example.com", metadata={}, idempotency_key="direct-1"
    )

    assert customer_id.startswith("cus_")
    assert forward_proxy.received == []
