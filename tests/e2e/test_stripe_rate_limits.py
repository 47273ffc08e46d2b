"""A billing run against a Stripe that limits its rate, through real processes: the emulator
sits behind a proxy that answers 429 beyond a rate a second and, besides, to a share of
all requests. Every invoice is charged once, no job gives up, and the rate of requests
that came to "Stripe", refused ones included, stays under its cap.

bench/stripe_rate_limit.py runs the same test with 5,000 subscriptions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from devstack.smtp import SmtpSink
from tests.e2e.conftest import (
    Stack,
    create_admin_key,
    paying_customer,
    retrying_client,
    start_stack,
    wait_for,
)
from tests.support.stripe_proxy import StripeProxy

pytestmark = pytest.mark.e2e

SUBSCRIPTIONS = int(os.environ.get("BILLING_RATE_LIMIT_SUBSCRIPTIONS", "300"))
# Stripe's test mode allows about 25 operations a second; the service paces itself at 20.
STRIPE_CAP = 25
PACE = 20


@pytest.fixture(scope="module")
def limited_stack(
    database_url: str, redis_url: str, proxy: StripeProxy, smtp_server: SmtpSink
) -> Iterator[Stack]:
    smtp_server.handler.clear()
    stack = start_stack(
        database_url,
        redis_url,
        proxy.url,
        smtp=smtp_server,
        extra_env={"STRIPE_MAX_REQUESTS_PER_SECOND": str(PACE), "STRIPE_TIMEOUT_SECONDS": "5"},
        billing_workers=2,
    )
    try:
        yield stack
    finally:
        stack.stop_all()


def _seed_due_subscriptions(database_url: str, customer_ids: list[str], count: int) -> None:
    """`count` monthly subscriptions whose first period ended an hour ago, spread over the
    paying customers, in plain SQL: the run finds them all due at once."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO prices (id, product, unit_amount, currency, interval) "
                    "VALUES ('prc_rate', 'Team plan', 1250, 'eur', 'month')"
                )
            )
            connection.execute(
                text(
                    "WITH anchor AS (SELECT date_trunc('second', now()) "
                    "  - interval '1 month 1 hour' AS at) "
                    "INSERT INTO subscriptions (id, customer_id, price_id, quantity, "
                    "collection_method, billing_cycle_anchor, current_period_index, "
                    "current_period_start, current_period_end) "
                    "SELECT 'sub_rate' || lpad(i::text, 6, '0'), "
                    "(:customers)[1 + i % cardinality(:customers)], 'prc_rate', 1 + i % 5, "
                    "'charge_automatically', anchor.at, 0, anchor.at, "
                    "anchor.at + interval '1 month' "
                    "FROM generate_series(0, :last) AS i, anchor"
                ),
                {"customers": customer_ids, "last": count - 1},
            )
    finally:
        engine.dispose()


def _run_counts(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            paid = connection.execute(
                text(
                    "SELECT count(*) FROM invoices i JOIN subscription_periods p "
                    "ON p.invoice_id = i.id "
                    "WHERE p.subscription_id LIKE 'sub_rate%' AND i.status = 'paid'"
                )
            ).scalar_one()
            given_up = connection.execute(
                text("SELECT count(*) FROM outbox_jobs WHERE state IN ('dead_lettered', 'failed')")
            ).scalar_one()
            unknown = connection.execute(
                text("SELECT count(*) FROM charge_attempts WHERE status = 'unknown'")
            ).scalar_one()
        return {"paid": int(paid), "given_up": int(given_up), "unknown": int(unknown)}
    finally:
        engine.dispose()


def test_a_billing_run_under_stripes_rate_limit_charges_every_invoice_once(
    limited_stack, proxy, emulator, database_url
):
    stack = limited_stack
    api = retrying_client(create_admin_key(stack, "rate-limits"))
    customers = [paying_customer(stack, api, emulator)["id"] for _ in range(3)]
    _seed_due_subscriptions(database_url, customers, SUBSCRIPTIONS)

    proxy.arrived_at.clear()
    proxy.max_rate = STRIPE_CAP
    proxy.rate_limited_ratio = 0.05  # and, besides, one request in twenty refused anyway
    producer = Celery("rate-limits", broker=stack.env["REDIS_URL"], set_as_current=False)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    started = time.monotonic()
    producer.send_task("billing.run_billing", queue="billing")
    try:
        # At the pace, the charges alone take SUBSCRIPTIONS / PACE seconds: three times
        # that, for a machine half as fast with the 429s' waits, plus two minutes.
        wait_for(
            lambda: _run_counts(database_url)["paid"] == SUBSCRIPTIONS,
            timeout=120 + 3 * SUBSCRIPTIONS / PACE,
            interval=1,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {_run_counts(database_url)}") from None
    finally:
        proxy.max_rate = 0
        proxy.rate_limited_ratio = 0.0
    elapsed = time.monotonic() - started
    counts = _run_counts(database_url)
    assert counts["given_up"] == 0 and counts["unknown"] == 0, counts

    charged: dict[str, list[str]] = {}
    for intent in emulator.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter():
        invoice_id = (intent.to_dict().get("metadata") or {}).get("invoice_id")
        if invoice_id and intent.status == "succeeded":
            charged.setdefault(invoice_id, []).append(intent.id)
    assert len(charged) >= SUBSCRIPTIONS
    assert all(len(intents) == 1 for intents in charged.values())

    busiest = proxy.busiest_second()
    assert busiest <= STRIPE_CAP
    print(
        f"rate limits: {SUBSCRIPTIONS} subscriptions billed and charged once in {elapsed:.0f} s; "
        f"{len(proxy.arrived_at)} requests reached Stripe, at most {busiest} in one second "
        f"(cap {STRIPE_CAP}, pace {PACE}); {proxy.rate_limited} answered 429, "
        f"{proxy.over_rate} of them for the rate; "
        f"0 jobs gave up, 0 charges unknown"
    )
