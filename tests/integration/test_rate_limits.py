"""Rate limits per API key, counted in the real Redis, and the caps that keep a customer key
from abusing payments and mail: tiny limits configured per test app, so that tests stay fast."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from billing.access.api_keys import create_api_key
from billing.extensions import db
from billing.models import ChargeAttempt, Customer, LedgerEntry, OutboxJob
from tests.conftest import CARD_DECLINED_AFTER_ATTACH, CARD_OK, Api
from tests.support.webhooks import event, stripe_signature

TINY_LIMITS = {
    "API_RATE_LIMIT": "3 per minute",
    "API_RATE_LIMIT_CUSTOMER": "2 per minute",
}


def _limited_app(service_env: dict[str, str], **overrides: str) -> Iterator[Any]:
    from billing import create_app

    limited = create_app({**service_env, **overrides})
    limited.config["TESTING"] = True
    yield limited
    with limited.app_context():
        db.engine.dispose()


@pytest.fixture
def limited_app(service_env, app):
    yield from _limited_app(service_env, **TINY_LIMITS)


@pytest.fixture
def limited(limited_app):
    """An API client of the app with tiny limits, given a key's secret."""

    def make(secret: str) -> Api:
        return Api(limited_app.test_client(), secret)

    return make


def _admin_secret(name: str = "admin") -> str:
    return create_api_key(name)[1]


def _customer_secret(customer_id: str) -> str:
    return create_api_key("customer", customer_id)[1]


def _assert_rate_limited(response: Any, code: str = "rate_limited") -> int:
    assert response.status_code == 429, response.get_json()
    assert response.get_json()["error"]["code"] == code
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def _count(model: Any, *where: Any) -> int:
    count = db.session.scalar(select(func.count()).select_from(model).where(*where))
    db.session.commit()
    return int(count or 0)


def test_a_key_over_its_limit_gets_429_rate_limited_with_retry_after(limited):
    api = limited(_admin_secret())
    for _ in range(3):
        assert api.get("/v1/customers").status_code == 200
    refused = api.get("/v1/customers")
    retry_after = _assert_rate_limited(refused)
    assert retry_after <= 60
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert "at most 3 per 1 minute" in refused.get_json()["error"]["message"]
    # One budget for the whole API, whichever route is asked.
    _assert_rate_limited(api.get("/v1/invoices"))


def test_each_key_has_its_own_budget_and_a_customer_key_the_smaller_one(limited, make_customer):
    busy, quiet = limited(_admin_secret("busy")), limited(_admin_secret("quiet"))
    customer = limited(_customer_secret(make_customer()["id"]))
    for _ in range(3):
        assert busy.get("/v1/customers").status_code == 200
    _assert_rate_limited(busy.get("/v1/customers"))
    assert quiet.get("/v1/customers").status_code == 200
    for _ in range(2):
        assert customer.get("/v1/invoices").status_code == 200
    _assert_rate_limited(customer.get("/v1/invoices"))


def test_a_refused_post_changes_nothing_and_stores_nothing_under_its_idempotency_key(
    limited,
):
    api = limited(_admin_secret())
    for _ in range(3):
        api.get("/v1/customers")
    refused = api.post(
        "/v1/customers",
        json={"name": "Acme GmbH", "email": "billing@acme.example", "currency": "eur"},
        headers={"Idempotency-Key": "create-acme"},
    )
    _assert_rate_limited(refused)
    assert _count(Customer) == 0
    assert _count(LedgerEntry, LedgerEntry.key == "create-acme") == 0


def test_requests_without_a_valid_key_are_counted_by_address(limited_app, limited):
    client = limited_app.test_client()
    stranger = limited("sk_bill_not_a_key")
    for _ in range(3):
        assert stranger.get("/v1/customers").status_code == 401
    _assert_rate_limited(stranger.get("/v1/customers"))
    _assert_rate_limited(client.get("/v1/customers"))  # no key at all: the same address
    assert "this address" in client.get("/openapi.json").get_json()["error"]["message"]
    # A valid key from that same address has a budget of its own.
    assert limited(_admin_secret()).get("/v1/customers").status_code == 200


def test_health_checks_metrics_and_stripe_webhooks_are_not_limited(limited_app):
    client = limited_app.test_client()
    for _ in range(4):
        client.get("/v1/customers")
    _assert_rate_limited(client.get("/v1/customers"))
    payload = event("customer.created", {"id": "cus_x", "object": "customer"})
    signature = stripe_signature(payload, "whsec_test")
    for _ in range(5):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        delivered = client.post(
            "/v1/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        )
        assert delivered.status_code == 200, delivered.get_json()


@pytest.fixture
def app_without_redis(service_env, app):
    # Nothing listens on port 1: every call to the limiter's Redis is refused.
    yield from _limited_app(service_env, REDIS_URL="redis://127.0.0.1:1/0", **TINY_LIMITS)


def test_the_api_still_answers_when_the_rate_limit_store_is_down(app_without_redis, caplog):
    api = Api(app_without_redis.test_client(), _admin_secret())
    with caplog.at_level(logging.WARNING):
        assert api.get("/v1/customers").status_code == 200
    assert any(
        record.levelno == logging.WARNING and "in-memory" in record.getMessage()
        for record in caplog.records
    )
    # Counted in this process's memory meanwhile, with the same limits.
    assert [api.get("/v1/customers").status_code for _ in range(3)] == [200, 200, 429]


@pytest.fixture
def card_limited(service_env, app):
    yield from _limited_app(service_env, CARD_ATTACH_RATE_LIMIT="2 per hour")


def _new_card(stripe_client: Any, number: str = CARD_OK) -> str:
    card = {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    return str(stripe_client.v1.payment_methods.create(params={"type": "card", "card": card}).id)


def test_a_customer_key_may_attach_only_a_few_cards_an_hour(
    card_limited, make_customer, run_jobs, stripe_client
):
    customer = make_customer()
    run_jobs()
    path = f"/v1/customers/{customer['id']}/payment_method"
    api = Api(card_limited.test_client(), _customer_secret(customer["id"]))
    for _ in range(2):
        attached = api.post(path, json={"payment_method": _new_card(stripe_client)})
        assert attached.status_code == 200, attached.get_json()
    last_card = _new_card(stripe_client)
    refused = api.post(path, json={"payment_method": last_card})
    assert _assert_rate_limited(refused) > 60
    assert "card attaches" in refused.get_json()["error"]["message"]
    assert db.session.get(Customer, customer["id"]).default_payment_method != last_card
    # Its other requests, and an admin key's attaches, are not held by that budget.
    assert api.get(f"/v1/customers/{customer['id']}").status_code == 200
    admin = Api(card_limited.test_client(), _admin_secret())
    assert admin.post(path, json={"payment_method": last_card}).status_code == 200


def _send_invoice(admin: Api, customer: dict[str, Any]) -> str:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Seats", "unit_amount": 900}],
        },
    ).get_json()
    assert admin.post(f"/v1/invoices/{draft['id']}/finalize").status_code == 200
    return str(draft["id"])


def test_an_invoice_is_tried_at_most_five_times_a_day_and_the_sixth_changes_nothing(
    admin, paying_customer, customer_api, run_jobs, mailbox
):
    customer = paying_customer(card=CARD_DECLINED_AFTER_ATTACH)
    invoice_id = _send_invoice(admin, customer)
    api = customer_api(customer["id"])
    for _ in range(5):
        paid = api.post(f"/v1/invoices/{invoice_id}/pay")
        assert (paid.status_code, paid.get_json()["created_now"]) == (202, True)
        run_jobs()
    attempts = (ChargeAttempt.invoice_id == invoice_id,)
    assert _count(ChargeAttempt, *attempts, ChargeAttempt.status == "failed") == 5
    jobs, mails = _count(OutboxJob), len(mailbox.messages)
    assert mails > 0

    refused = api.post(f"/v1/invoices/{invoice_id}/pay", headers={"Idempotency-Key": "sixth"})
    retry_after = _assert_rate_limited(refused, "too_many_payment_attempts")
    assert 23 * 3600 < retry_after <= 24 * 3600
    run_jobs()
    assert _count(ChargeAttempt, *attempts) == 5
    assert (_count(OutboxJob), len(mailbox.messages)) == (jobs, mails)
    # "Not today" is not an answer to replay: the key stays free for a later retry.
    assert _count(LedgerEntry, LedgerEntry.key == "sixth") == 0
    # The cap is per invoice: another invoice of the customer may still be paid.
    assert api.post(f"/v1/invoices/{_send_invoice(admin, customer)}/pay").status_code == 202


def test_a_customer_key_cannot_change_where_billing_mail_goes_but_an_admin_key_can(
    admin, make_customer, customer_api
):
    customer = make_customer(billing_emails=["ap@acme.example"])
    path = f"/v1/customers/{customer['id']}"
    api = customer_api(customer["id"])
    for change, param in (
        ({"billing_emails": ["anyone@elsewhere.example"]}, "billing_emails"),
        ({"email": "anyone@elsewhere.example"}, "email"),
        ({"name": "Acme AG", "billing_emails": []}, "billing_emails"),
    ):
        refused = api.patch(path, json=change)
        assert refused.status_code == 403, refused.get_json()
        error = refused.get_json()["error"]
        assert (error["code"], error["param"]) == ("permission_denied", param)
    unchanged = admin.get(path).get_json()
    assert (unchanged["name"], unchanged["email"], unchanged["billing_emails"]) == (
        "Acme GmbH",
        "billing@acme.example",
        ["ap@acme.example"],
    )
    # Sending the addresses as they are is no change; the other fields stay the customer's.
    same = api.patch(path, json={**{k: unchanged[k] for k in ("email", "billing_emails")}})
    assert same.status_code == 200
    assert api.patch(path, json={"name": "Acme AG"}).get_json()["name"] == "Acme AG"
    moved = admin.patch(path, json={"billing_emails": ["finance@acme.example"]})
    assert moved.get_json()["billing_emails"] == ["finance@acme.example"]


def test_the_openapi_document_names_the_429_and_its_headers(client):
    document = client.get("/openapi.json").get_json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answer = operation["responses"].get("429")
            assert answer is not None, (method, path)
            assert {"Retry-After", "X-RateLimit-Limit"} <= set(answer["headers"])
