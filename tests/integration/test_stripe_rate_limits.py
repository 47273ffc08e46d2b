"""Stripe's rate limits against the emulator behind a proxy that answers 429: calls share one
pace in Redis, a 429 is waited out, and a long storm parks the job without spending it."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from billing.adapters.stripe_pacing import StripePacer
from billing.extensions import db
from billing.models import ChargeAttempt, LedgerEntry, OutboxJob
from tests.conftest import intents_for_invoice
from tests.support.stripe_proxy import StripeProxy


def _charge_job() -> OutboxJob:
    job = db.session.scalars(
        select(OutboxJob).where(OutboxJob.name == "billing.charge_invoice")
    ).one()
    db.session.refresh(job)
    db.session.commit()
    return job


def _attempt(invoice_id: str) -> ChargeAttempt:
    attempt = db.session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.invoice_id == invoice_id)
    ).one()
    db.session.refresh(attempt)
    db.session.commit()
    return attempt


def test_a_429_is_waited_out_and_the_invoice_charged_once_never_unknown(
    admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice = open_invoice(paying_customer())
    proxied, proxy = proxied_app
    proxy.fail_requests(2, status=429, path="/v1/payment_intents")
    job_id = _charge_job().id
    with proxied.app_context():
        from workers.billing import charge_invoice

        charge_invoice.apply(kwargs={"job_id": job_id})
        db.session.remove()
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    job = _charge_job()
    assert (job.state, job.attempts) == ("succeeded", 1)
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.status == "succeeded"


def test_a_429_storm_longer_than_the_wait_parks_the_job_without_spending_an_attempt(
    admin, paying_customer, open_invoice, service_env, localstripe, stripe_client
):
    from billing import create_app
    from workers.app import make_celery

    invoice = open_invoice(paying_customer())
    proxy = StripeProxy(localstripe.url).start()
    # One second of waiting at most per call: the storm outlasts it.
    limited = create_app(
        {**service_env, "STRIPE_API_BASE": proxy.url, "STRIPE_TIMEOUT_SECONDS": "1"}
    )
    make_celery(limited)
    job_id = _charge_job().id
    try:
        proxy.rate_limited_ratio = 1.0
        with limited.app_context():
            from workers.billing import charge_invoice

            charge_invoice.apply(kwargs={"job_id": job_id})
            db.session.remove()
        job = _charge_job()
        assert (job.state, job.attempts) == ("pending", 0)
        assert "StripeRateLimited" in (job.last_error or "")
        attempt = _attempt(invoice["id"])
        assert attempt.status == "started"  # not unknown: Stripe did nothing
        # The first claim was let go: the next run goes straight ahead.
        assert (
            db.session.scalars(
                select(LedgerEntry).where(LedgerEntry.key == attempt.ledger_key)
            ).all()
            == []
        )
        assert intents_for_invoice(stripe_client, invoice["id"]) == []

        proxy.rate_limited_ratio = 0.0  # the storm passes
        with limited.app_context():
            charge_invoice.apply(kwargs={"job_id": job_id})
            db.session.remove()
    finally:
        proxy.stop()
    job = _charge_job()
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.status == "succeeded"


def test_stripe_calls_of_two_processes_share_one_pace(redis_url, redis_client):
    rate = 20.0
    pacers = [StripePacer(redis_url, rate), StripePacer(redis_url, rate)]
    turns: list[float] = []
    lock = threading.Lock()

    def call(pacer: StripePacer) -> None:
        for _ in range(15):
            pacer.wait_for_turn()
            with lock:
                turns.append(time.monotonic())

    threads = [threading.Thread(target=call, args=(pacer,)) for pacer in pacers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Thirty turns at twenty a second take at least 29 intervals, however fast the machine.
    assert max(turns) - min(turns) >= 29 / rate - 0.01


def test_without_redis_stripe_calls_go_unpaced_rather_than_stop():
    pacer = StripePacer("redis://127.0.0.1:9/0", 1.0)
    assert pacer.wait_for_turn() == 0.0
    assert pacer.wait_for_turn() == 0.0
