"""The async path against real Redis and the Stripe emulator: record, publish, run, sweep."""

import json
from datetime import timedelta

from sqlalchemy import func, update

from billing.adapters.broker import BrokerView, queue_keys
from billing.extensions import db
from billing.models import Customer, LedgerEntry, OutboxJob
from billing.platform import outbox
from tests.support.jobs import run_until_settled
from workers.runner import MAX_ATTEMPTS


def _queued(redis_client, queue="billing"):
    """Every message waiting in the queue, whatever its priority's list."""
    return [json.loads(raw) for key in queue_keys(queue) for raw in redis_client.lrange(key, 0, -1)]


def _run(celery_app, job_id):
    from workers.billing import sync_customer

    return sync_customer.apply(kwargs={"job_id": job_id})


def _stripe_customers_for(stripe_client, customer_id):
    return [
        c
        for c in stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
        if (c.to_dict().get("metadata") or {}).get("billing_customer_id") == customer_id
    ]


def _expire_lease(job_id):
    db.session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job_id)
        .values(lease_expires_at=func.now() - timedelta(seconds=1))
    )
    db.session.commit()


def test_creating_a_customer_publishes_its_job_to_the_billing_queue(make_customer, redis_client):
    customer = make_customer()
    messages = _queued(redis_client)
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "billing.sync_customer"
    assert messages[0]["headers"]["id"]
    body = json.loads(__import__("base64").b64decode(messages[0]["body"]))
    assert body[1] == {"job_id": customer["sync_job"]}
    assert db.session.get(OutboxJob, customer["sync_job"]).state == "sent"


def test_the_sync_job_creates_the_customer_on_stripe_once(celery_app, make_customer, stripe_client):
    customer = make_customer()
    _run(celery_app, customer["sync_job"])
    _run(celery_app, customer["sync_job"])  # a redelivery
    db.session.expire_all()
    stored = db.session.get(Customer, customer["id"])
    found = _stripe_customers_for(stripe_client, customer["id"])
    assert [c.id for c in found] == [stored.stripe_customer_id]
    assert found[0].email == customer["email"]
    job = db.session.get(OutboxJob, customer["sync_job"])
    assert (job.state, job.attempts, job.finished_at is not None) == ("succeeded", 1, True)


def test_a_job_run_again_after_its_lease_does_not_create_a_second_stripe_customer(
    celery_app, make_customer, stripe_client
):
    customer = make_customer()
    _run(celery_app, customer["sync_job"])
    # The sweeper re-sends a job it believes lost; the handler sees the work is done.
    db.session.execute(
        update(OutboxJob).where(OutboxJob.id == customer["sync_job"]).values(state="sent")
    )
    db.session.commit()
    _run(celery_app, customer["sync_job"])
    assert len(_stripe_customers_for(stripe_client, customer["id"])) == 1


def test_a_creation_whose_answer_was_lost_is_reconciled_not_repeated(
    celery_app, make_customer, stripe_client
):
    customer = make_customer()
    ledger_key = f"customer:{customer['id']}"
    # An earlier attempt reached Stripe, then its worker died before recording the answer.
    created = stripe_client.v1.customers.create(
        params={
            "name": customer["name"],
            "email": customer["email"],
            "metadata": {"billing_customer_id": customer["id"], "ledger_key": ledger_key},
        }
    )
    db.session.add(
        LedgerEntry(
            scope="stripe.customer.create",
            key=ledger_key,
            fingerprint=customer["id"],
            state="unknown",
        )
    )
    db.session.commit()
    _run(celery_app, customer["sync_job"])
    db.session.expire_all()
    assert db.session.get(Customer, customer["id"]).stripe_customer_id == created.id
    assert len(_stripe_customers_for(stripe_client, customer["id"])) == 1


def test_stripe_unreachable_makes_the_job_retry_then_dead_letter(
    service_env, redis_client, make_customer
):
    from billing import create_app
    from workers.app import make_celery

    customer = make_customer()
    broken = create_app({**service_env, "STRIPE_API_BASE": "http://127.0.0.1:9"})
    with broken.app_context():
        make_celery(broken)
        from workers.billing import sync_customer

        # Each retry run at once rather than when due: every attempt meets the outage.
        job = run_until_settled(sync_customer, customer["sync_job"])
        assert job.state == "dead_lettered"
        assert job.attempts == MAX_ATTEMPTS
        assert "Stripe unavailable" in job.last_error
        entry = db.session.query(LedgerEntry).filter_by(scope="stripe.customer.create").one()
        assert entry.state == "unknown"
        db.session.remove()


def test_a_job_is_not_lost_when_the_broker_is_down_at_commit(service_env, redis_client, app):
    from billing import create_app
    from billing.access.api_keys import create_api_key

    _, secret = create_api_key("admin")
    no_broker = create_app({**service_env, "REDIS_URL": "redis://127.0.0.1:9/0"})
    with no_broker.app_context():
        response = no_broker.test_client().post(
            "/v1/customers",
            json={"name": "Acme", "email": "a@acme.example", "currency": "eur"},
            headers={"Authorization": f"Bearer {secret}"},
        )
        db.session.remove()
    assert response.status_code == 200
    job_id = response.get_json()["sync_job"]
    assert db.session.get(OutboxJob, job_id).state == "pending"
    assert _queued(redis_client) == []
    _expire_lease(job_id)
    assert outbox.sweep() == 1
    assert len(_queued(redis_client)) == 1
    db.session.expire_all()
    assert db.session.get(OutboxJob, job_id).state == "sent"


def test_a_job_flushed_from_redis_is_sent_again_by_the_sweeper(
    celery_app, make_customer, redis_client, stripe_client
):
    customer = make_customer()
    redis_client.flushdb()
    assert outbox.sweep() == 0  # its lease still runs: not presumed lost yet
    _expire_lease(customer["sync_job"])
    assert outbox.sweep() == 1
    [message] = _queued(redis_client)
    assert message["headers"]["task"] == "billing.sync_customer"
    _run(celery_app, customer["sync_job"])
    assert len(_stripe_customers_for(stripe_client, customer["id"])) == 1


def test_without_the_brokers_word_an_unstarted_job_is_sent_again_less_and_less_often(
    app, make_customer, redis_client
):
    """Lost, or only waiting behind a long queue, which only the broker could tell: each
    resend waits twice as long, up to four leases."""
    job_id = make_customer()["sync_job"]  # sent, with the plain five-minute lease
    app.extensions["billing.broker_view"] = BrokerView("redis://127.0.0.1:9/0")
    waits = []
    for _ in range(4):
        # The whole wait went by and no worker started it.
        db.session.execute(
            update(OutboxJob)
            .where(OutboxJob.id == job_id)
            .values(
                sent_at=func.now() - (OutboxJob.lease_expires_at - OutboxJob.sent_at),
                lease_expires_at=func.now() - timedelta(seconds=1),
            )
        )
        db.session.commit()
        assert outbox.sweep() == 1
        db.session.expire_all()
        job = db.session.get(OutboxJob, job_id)
        waits.append(round((job.lease_expires_at - job.sent_at).total_seconds()))
    assert waits == [600, 1200, 1200, 1200]
    assert len(_queued(redis_client)) == 5  # the first publish and four resends


def test_a_finished_job_is_never_swept(celery_app, make_customer, redis_client):
    customer = make_customer()
    _run(celery_app, customer["sync_job"])
    redis_client.flushdb()
    _expire_lease(customer["sync_job"])
    assert outbox.sweep() == 0
    assert _queued(redis_client) == []


def test_a_job_state_is_readable_over_the_api(admin, celery_app, make_customer):
    customer = make_customer()
    _run(celery_app, customer["sync_job"])
    job = admin.get(f"/v1/jobs/{customer['sync_job']}").get_json()
    assert job["state"] == "succeeded"
    assert job["attempts"] == 1
    assert job["started_at"] and job["finished_at"]
    assert admin.get("/v1/jobs/job_unknown").status_code == 404


def test_attaching_a_payment_method_makes_it_the_default_on_stripe(
    admin, make_customer, stripe_client
):
    customer = make_customer()
    pm = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    response = admin.post(
        f"/v1/customers/{customer['id']}/payment_method", json={"payment_method": pm.id}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["default_payment_method"] == pm.id
    on_stripe = stripe_client.v1.customers.retrieve(body["stripe_customer_id"])
    assert on_stripe.invoice_settings.default_payment_method == pm.id


def test_an_unknown_payment_method_is_refused_by_stripe_and_changes_nothing(admin, make_customer):
    customer = make_customer()
    response = admin.post(
        f"/v1/customers/{customer['id']}/payment_method", json={"payment_method": "pm_missing"}
    )
    assert response.status_code == 402
    assert response.get_json()["error"]["code"] == "payment_method_rejected"
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["default_payment_method"] is None


def test_a_stripe_outage_answers_503_and_does_not_burn_the_idempotency_key(
    service_env, app, make_customer, stripe_client
):
    from billing import create_app
    from billing.access.api_keys import create_api_key

    customer = make_customer()
    _, secret = create_api_key("admin")
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "attach-1"}
    path = f"/v1/customers/{customer['id']}/payment_method"
    pm = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    outage = create_app({**service_env, "STRIPE_API_BASE": "http://127.0.0.1:9"})
    with outage.app_context():
        down = outage.test_client().post(path, json={"payment_method": pm.id}, headers=headers)
        db.session.remove()
    assert down.status_code in (409, 503)
    assert down.get_json()["error"]["code"] in ("customer_not_synced", "stripe_unavailable")
    # Stripe is back: the same request with the same key now runs and succeeds.
    again = app.test_client().post(path, json={"payment_method": pm.id}, headers=headers)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["default_payment_method"] == pm.id
