"""/metrics: the counters follow real work through the API and the jobs; the states are
read from PostgreSQL and Redis at scrape time; a scrape answers even with Redis away."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from billing.adapters.broker import queue_keys
from billing.extensions import db
from billing.models import ChargeAttempt, InvoiceDocument, OutboxJob
from devstack.servers import free_port
from tests.support.metrics import Samples, parse_samples, value
from tests.support.webhooks import event, stripe_signature

WEBHOOK_SECRET = "whsec_test"  # service_env's STRIPE_WEBHOOK_SECRET


def scrape(client: Any, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    return parse_samples(response.get_data(as_text=True))


class Counts:
    """The change of each sample between two scrapes (a sample never seen counts as 0)."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def delta(self, name: str, **labels: str) -> float:
        return (value(self.after, name, **labels) or 0.0) - (
            value(self.before, name, **labels) or 0.0
        )


def deliver_webhook(client: Any, payload: bytes, secret: str = WEBHOOK_SECRET) -> Any:
    return client.post(
        "/v1/webhooks/stripe",
        data=payload,
        headers={
            "Stripe-Signature": stripe_signature(payload, secret),
            "Content-Type": "application/json",
        },
    )


def test_a_charged_invoice_is_counted_in_charges_jobs_pdfs_and_emails(
    client, admin, paying_customer, open_invoice, run_jobs, mailbox
):
    customer = paying_customer()
    before = scrape(client)

    invoice = open_invoice(customer)
    run_jobs()

    paid = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert paid["status"] == "paid"
    counts = Counts(before, scrape(client))
    assert counts.delta("billing_charges_total", outcome="succeeded") == 1
    charge_job = {"queue": "billing", "task": "billing.charge_invoice"}
    assert counts.delta("billing_tasks_total", **charge_job, outcome="succeeded") == 1
    assert counts.delta("billing_task_duration_seconds_count", **charge_job) == 1
    assert counts.delta("billing_task_duration_seconds_sum", **charge_job) > 0
    renders = db.session.scalar(
        select(func.count())
        .select_from(InvoiceDocument)
        .where(InvoiceDocument.invoice_id == invoice["id"])
    )
    assert renders >= 1
    assert counts.delta("billing_pdf_render_seconds_count") == renders
    assert (
        counts.delta(
            "billing_tasks_total", queue="pdf", task="pdf.render_invoice", outcome="succeeded"
        )
        >= 1
    )
    for kind in ("invoice_issued", "payment_receipt"):
        assert counts.delta("billing_emails_total", kind=kind, outcome="sent") == 1
    assert (
        counts.delta(
            "billing_tasks_total", queue="mail", task="mail.send_email", outcome="succeeded"
        )
        == 2
    )
    assert len(mailbox.messages) == 2


def test_webhook_deliveries_are_counted_by_type_and_outcome(
    client, admin, paying_customer, open_invoice, run_jobs
):
    invoice = open_invoice(paying_customer())
    run_jobs()
    intent_id = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["payment_attempts"][0][
        "payment_intent"
    ]
    before = scrape(client)

    refunded = event("charge.refunded", {"payment_intent": intent_id, "amount_refunded": 1000})
    assert deliver_webhook(client, refunded).status_code == 200
    assert deliver_webhook(client, refunded).status_code == 200  # Stripe delivering again
    not_ours = event("customer.created", {"id": "cus_elsewhere"})
    assert deliver_webhook(client, not_ours).status_code == 200
    forged = event("charge.refunded", {"payment_intent": intent_id, "amount_refunded": 5000})
    assert deliver_webhook(client, forged, secret="whsec_forged").status_code == 400
    run_jobs()

    counts = Counts(before, scrape(client))
    assert (
        counts.delta("billing_webhook_events_total", type="charge.refunded", outcome="received")
        == 1
    )
    assert (
        counts.delta("billing_webhook_events_total", type="charge.refunded", outcome="duplicate")
        == 1
    )
    assert (
        counts.delta("billing_webhook_events_total", type="charge.refunded", outcome="processed")
        == 1
    )
    assert (
        counts.delta("billing_webhook_events_total", type="customer.created", outcome="ignored")
        == 1
    )
    assert (
        counts.delta("billing_webhook_events_total", type="unverified", outcome="bad_signature")
        == 1
    )
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["amount_refunded"] == 1000


def test_queue_depth_and_outbox_lag_match_what_waits_in_redis_and_the_outbox(
    client, make_customer, redis_client
):
    for number in range(3):
        make_customer(email=f"billing{number}@acme.example")  # each records a sync job

    samples = scrape(client)

    assert sum(redis_client.llen(k) for k in queue_keys("billing")) == 3
    assert value(samples, "billing_queue_depth", queue="billing") == 3
    assert value(samples, "billing_queue_depth", queue="pdf") == 0
    assert value(samples, "billing_queue_depth", queue="mail") == 0
    assert 0 < value(samples, "billing_queue_oldest_message_age_seconds", queue="billing") < 60
    assert value(samples, "billing_queue_oldest_message_age_seconds", queue="pdf") == 0
    assert value(samples, "billing_outbox_unfinished_jobs", queue="billing") == 3
    assert 0 < value(samples, "billing_outbox_lag_seconds", queue="billing") < 60
    assert value(samples, "billing_outbox_lag_seconds", queue="mail") == 0
    assert value(samples, "billing_scrape_errors", source="broker") == 0
    assert value(samples, "billing_scrape_errors", source="database") == 0


def test_unknown_charge_attempts_and_dead_letters_are_counted_from_the_database(
    client, paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer())  # its charge attempt and job are recorded
    assert value(scrape(client), "billing_charge_attempts_unknown") == 0

    # The states a lost Stripe answer and eight failed tries leave behind.
    db.session.execute(
        update(ChargeAttempt)
        .where(ChargeAttempt.invoice_id == invoice["id"])
        .values(status="unknown")
    )
    db.session.execute(
        update(OutboxJob)
        .where(OutboxJob.name == "billing.charge_invoice")
        .values(state="dead_lettered")
    )
    db.session.commit()

    samples = scrape(client)
    assert value(samples, "billing_charge_attempts_unknown") == 1
    assert (
        value(samples, "billing_outbox_dead_letters", queue="billing", state="dead_lettered") == 1
    )


def test_a_scrape_with_redis_unreachable_still_answers_with_what_the_database_knows(
    service_env, app, make_customer
):
    from billing import create_app

    make_customer()  # one unfinished job on the billing queue
    no_redis = create_app({**service_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        samples = scrape(no_redis.test_client())
    finally:
        with no_redis.app_context():
            db.engine.dispose()

    assert value(samples, "billing_scrape_errors", source="broker") == 1
    assert value(samples, "billing_scrape_errors", source="database") == 0
    assert value(samples, "billing_queue_depth", queue="billing") is None
    assert value(samples, "billing_outbox_unfinished_jobs", queue="billing") == 1
    assert value(samples, "billing_charge_attempts_unknown") == 0


def test_with_a_metrics_token_set_a_scrape_must_bring_it(service_env, app):
    from billing import create_app

    guarded = create_app({**service_env, "METRICS_TOKEN": "scrape-secret"})
    try:
        client = guarded.test_client()
        refused = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        samples = scrape(client, Authorization="Bearer scrape-secret")
    finally:
        with guarded.app_context():
            db.engine.dispose()

    assert refused.status_code == 401 and wrong.status_code == 401
    assert refused.get_json()["error"]["code"] == "authentication_required"
    assert value(samples, "billing_scrape_errors", source="database") == 0


def test_in_production_the_web_does_not_start_without_a_metrics_token(service_env, app):
    from billing import create_app
    from billing.config import ConfigError

    production = {**service_env, "BILLING_ENV": "production"}
    with pytest.raises(ConfigError, match="needs METRICS_TOKEN for BILLING_ROLE=web"):
        create_app(production)

    # Were some other role's app to serve HTTP, /metrics stays closed without a token.
    other = create_app({**production, "BILLING_ROLE": "worker"})
    try:
        answer = other.test_client().get("/metrics")
    finally:
        with other.app_context():
            db.engine.dispose()
    assert answer.status_code == 403
    assert answer.get_json()["error"]["code"] == "permission_denied"


def test_an_outcome_counted_on_commit_is_dropped_when_its_transaction_rolls_back(app):
    from prometheus_client import CollectorRegistry, Counter

    from billing.platform.metrics import count_on_commit

    registry = CollectorRegistry()
    outcomes = Counter("test_outcomes", "Outcomes recorded.", ["outcome"], registry=registry)

    def counted(outcome: str) -> float | None:
        return registry.get_sample_value("test_outcomes_total", {"outcome": outcome})

    session = db.session()
    count_on_commit(session, outcomes.labels(outcome="rolled_back"))
    session.execute(select(1))
    session.rollback()
    count_on_commit(session, outcomes.labels(outcome="committed"))
    session.execute(select(1))
    session.commit()
    session.commit()  # a later commit does not count it again

    assert counted("rolled_back") == 0
    assert counted("committed") == 1
