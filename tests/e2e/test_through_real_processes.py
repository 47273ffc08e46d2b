"""Driven over HTTP against gunicorn, real Celery workers, beat, Redis and the emulator."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import stripe

from billing.adapters.broker import queue_keys
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

LINES = [{"description": "Seats", "quantity": 5, "unit_amount": 1200, "tax_rate": 19}]


def _create_customer(stack, http, **headers):
    response = http.post(
        f"{stack.url}/v1/customers",
        json={"name": "Acme", "email": "billing@acme.example", "currency": "eur"},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _job(stack, http, job_id):
    return http.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()


def _stripe_customers_for(localstripe, customer_id):
    client = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    return [
        c.id
        for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
        if (c.to_dict().get("metadata") or {}).get("billing_customer_id") == customer_id
    ]


def test_the_service_reports_ready_when_database_and_broker_answer(stack):
    import requests

    assert requests.get(f"{stack.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{stack.url}/readyz", timeout=5).json()
    assert ready == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_a_new_customer_is_created_on_stripe_by_the_billing_worker(stack, http, localstripe):
    request_id = f"e2e-{uuid.uuid4().hex[:12]}"
    customer = _create_customer(stack, http, **{"X-Request-ID": request_id})
    job = wait_for(
        lambda: (j := _job(stack, http, customer["sync_job"]))["state"] == "succeeded" and j
    )
    assert job["attempts"] == 1
    assert job["request_id"] == request_id
    stored = http.get(f"{stack.url}/v1/customers/{customer['id']}", timeout=10).json()
    assert _stripe_customers_for(localstripe, customer["id"]) == [stored["stripe_customer_id"]]

    # The request id travels from the web request into the worker's log lines.
    def worker_logged_it():
        for line in stack.log_path("worker-billing").read_text().splitlines():
            if line.startswith("{") and request_id in line:
                event = json.loads(line)
                if event.get("event") == "job.succeeded":
                    return event
        return None

    event = wait_for(worker_logged_it, timeout=10)
    assert event["task_id"] and event["job_id"] == customer["sync_job"]
    assert event["customer_id"] == customer["id"]


def test_a_job_survives_redis_being_flushed_after_commit(stack, http, localstripe):
    stack.stop("worker-billing")
    customer = _create_customer(stack, http)
    assert _job(stack, http, customer["sync_job"])["state"] == "sent"
    assert sum(stack.redis.llen(key) for key in queue_keys("billing")) >= 1
    stack.redis.flushdb()  # the broker loses every message it held
    stack.start_worker("billing")
    job = wait_for(
        lambda: (j := _job(stack, http, customer["sync_job"]))["state"] == "succeeded" and j,
        timeout=60,
    )
    assert job["state"] == "succeeded"
    assert len(_stripe_customers_for(localstripe, customer["id"])) == 1


def test_twenty_parallel_finalizations_get_gapless_numbers(stack, http):
    customer = _create_customer(stack, http)
    drafts = [
        http.post(
            f"{stack.url}/v1/invoices",
            json={"customer": customer["id"], "lines": LINES},
            timeout=10,
        ).json()["id"]
        for _ in range(20)
    ]

    def finalize(invoice_id):
        return http.post(f"{stack.url}/v1/invoices/{invoice_id}/finalize", timeout=30)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(finalize, drafts))
    assert [r.status_code for r in responses] == [200] * 20
    numbers = sorted(int(r.json()["number"].rsplit("-", 1)[1]) for r in responses)
    assert numbers == list(range(numbers[0], numbers[0] + 20))
    listed = http.get(f"{stack.url}/v1/invoices?status=open&limit=100", timeout=10).json()
    assert len({i["number"] for i in listed["data"]}) == len(listed["data"]) >= 20


def test_idempotent_retries_through_gunicorn_create_one_customer(stack, http):
    key = f"e2e-{uuid.uuid4().hex}"
    body = {"name": "Once", "email": "once@acme.example", "currency": "eur"}

    def post(_):
        return http.post(
            f"{stack.url}/v1/customers", json=body, headers={"Idempotency-Key": key}, timeout=10
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(post, range(20)))
    assert {r.status_code for r in responses} <= {200, 409}
    assert len({r.json()["id"] for r in responses if r.status_code == 200}) == 1


def test_the_emulators_signed_webhooks_are_verified_stored_and_applied(
    stack, http, localstripe, database_url
):
    from sqlalchemy import create_engine, text

    localstripe.configure_webhook(f"{stack.url}/v1/webhooks/stripe", "whsec_test", webhook_id="e2e")
    client = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    customer = _create_customer(stack, http)
    wait_for(
        lambda: http.get(f"{stack.url}/v1/customers/{customer['id']}", timeout=10).json()[
            "stripe_customer_id"
        ]
    )
    pm = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    attached = http.post(
        f"{stack.url}/v1/customers/{customer['id']}/payment_method",
        json={"payment_method": pm.id},
        timeout=30,
    )
    assert attached.status_code == 200, attached.text
    draft = http.post(
        f"{stack.url}/v1/invoices",
        json={"customer": customer["id"], "lines": LINES},
        timeout=10,
    ).json()
    http.post(f"{stack.url}/v1/invoices/{draft['id']}/finalize", timeout=10)
    paid = wait_for(
        lambda: (
            (i := http.get(f"{stack.url}/v1/invoices/{draft['id']}", timeout=10).json())["status"]
            == "paid"
            and i
        )
    )
    intent = paid["payment_attempts"][0]["payment_intent"]
    engine = create_engine(database_url)

    def stored_event():
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT id, status FROM stripe_events WHERE type = 'payment_intent.succeeded'"
                    " AND payload -> 'data' -> 'object' ->> 'id' = :intent"
                ),
                {"intent": intent},
            ).first()

    event_id, _ = wait_for(stored_event, timeout=30)
    # Applied through the charge ledger: the attempt was already recorded as succeeded, so
    # the event changes nothing and is marked as such.
    status = wait_for(lambda: (row := stored_event()) and row[1] != "received" and row[1])
    engine.dispose()
    assert event_id.startswith("evt_")
    assert status == "ignored"
    after = http.get(f"{stack.url}/v1/invoices/{draft['id']}", timeout=10).json()
    assert (after["status"], after["amount_paid"]) == ("paid", paid["total"])
