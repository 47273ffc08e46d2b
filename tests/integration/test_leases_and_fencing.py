"""Work that outlives its lease is taken over, and the late original can no longer record
anything: one Idempotency-Key never runs twice, a finished job is never reopened."""

import threading
import time
from datetime import timedelta

import psycopg2
import pytest
from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import Customer, OutboxJob
from billing.platform import outbox
from billing.platform.outbox import MAX_ATTEMPTS

BODY = {"name": "Acme", "email": "billing@acme.example", "currency": "eur"}


def _count_customers() -> int:
    return db.session.scalar(select(func.count()).select_from(Customer))


def _expire_job_leases() -> None:
    db.session.execute(update(OutboxJob).values(lease_expires_at=func.now() - timedelta(seconds=1)))
    db.session.commit()


def test_a_request_that_outlives_its_key_lease_cannot_commit_after_a_retry_took_over(
    app, admin, monkeypatch, database_url
):
    import billing.api.endpoint as endpoint

    # The lease is a policy constant (60 s); shortened so the test need not wait a minute.
    monkeypatch.setattr(endpoint, "IDEMPOTENT_REQUEST_LEASE", timedelta(seconds=1))
    blocker = psycopg2.connect(database_url.replace("postgresql+psycopg2://", "postgresql://"))
    blocker.cursor().execute("LOCK TABLE customers IN SHARE MODE")  # the first request stalls
    results: list[int] = []

    def post() -> None:
        with app.app_context():
            response = app.test_client().post(
                "/v1/customers",
                json=BODY,
                headers={"Authorization": f"Bearer {admin.secret}", "Idempotency-Key": "slow"},
            )
            results.append(response.status_code)

    first = threading.Thread(target=post)
    first.start()
    time.sleep(1.5)  # the client gives up and retries with the same key, past the lease
    second = threading.Thread(target=post)
    second.start()
    time.sleep(0.5)
    blocker.commit()
    blocker.close()
    first.join()
    second.join()
    assert _count_customers() == 1
    assert sorted(results) == [200, 409]


def test_a_late_worker_cannot_reopen_a_job_a_newer_run_finished(app, make_customer):
    customer = make_customer()
    late = outbox.start_job(customer["sync_job"])
    _expire_job_leases()  # the first worker stalls past its lease
    assert outbox.sweep() == 1
    newer = outbox.start_job(customer["sync_job"])
    assert late is not None and newer is not None
    assert outbox.job_succeeded(newer)
    assert not outbox.job_will_retry(late, "Stripe timeout", 1.0)
    assert not outbox.job_failed(late, "gave up")
    job = db.session.get(OutboxJob, customer["sync_job"])
    db.session.refresh(job)
    assert job.state == "succeeded"
    assert outbox.start_job(customer["sync_job"]) is None


def test_a_job_whose_every_run_kills_its_worker_is_dead_lettered(app, make_customer):
    customer = make_customer()
    for _ in range(MAX_ATTEMPTS):
        assert outbox.start_job(customer["sync_job"]) is not None  # ... and the worker dies
        _expire_job_leases()
        outbox.sweep()
    assert outbox.start_job(customer["sync_job"]) is None
    job = db.session.get(OutboxJob, customer["sync_job"])
    db.session.refresh(job)
    assert (job.state, job.attempts) == ("dead_lettered", MAX_ATTEMPTS)
    assert "gave up" in job.last_error


class _Abort(BaseException):
    """What a process being stopped raises in the middle of publishing (SystemExit)."""


def test_an_abort_after_commit_does_not_forget_the_key(app, admin):
    class AbortingPublisher:
        def publish(self, *args: object) -> None:
            raise _Abort

        def ping(self) -> None:
            pass

    real = app.extensions["billing.publisher"]
    app.extensions["billing.publisher"] = AbortingPublisher()
    try:
        with pytest.raises(_Abort):
            admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "aborted"})
    finally:
        app.extensions["billing.publisher"] = real
    db.session.rollback()
    retry = admin.post("/v1/customers", json=BODY, headers={"Idempotency-Key": "aborted"})
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert _count_customers() == 1


def test_waiting_for_another_runs_claim_does_not_use_up_the_jobs_attempts(
    app, make_customer, celery_app
):
    from billing.customers.customers import LEDGER_SCOPE_STRIPE_CUSTOMER
    from billing.platform import ledger

    customer = make_customer()
    # Another run (a duplicate delivery) holds the Stripe side effect for a minute.
    ledger.claim(
        LEDGER_SCOPE_STRIPE_CUSTOMER,
        f"customer:{customer['id']}",
        customer["id"],
        lease=timedelta(minutes=1),
    )
    for _ in range(MAX_ATTEMPTS + 2):
        celery_app.tasks["billing.sync_customer"].apply(kwargs={"job_id": customer["sync_job"]})
    job = db.session.get(OutboxJob, customer["sync_job"])
    db.session.refresh(job)
    # Parked for its retry (pending, due when the holder's lease ends), no attempt spent.
    assert (job.state, job.attempts) == ("pending", 0)
    assert "held" in job.last_error or "another worker" in job.last_error


def test_a_job_finding_its_side_effect_held_comes_back_when_the_holder_s_lease_ends(app):
    from billing.models import LedgerEntry
    from billing.platform import ledger
    from billing.platform.errors import HeldElsewhere
    from billing.platform.unit_of_work import transaction

    lease = timedelta(seconds=30)
    ledger.claim("test.effect", "key-1", "owner-1", lease=lease)
    # The holder was killed 26 s into its 30 s lease: 4 s of it are left.
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.key == "key-1")
        .values(locked_until=func.now() + timedelta(seconds=4))
    )
    db.session.commit()
    with pytest.raises(HeldElsewhere) as held, transaction():
        ledger.claim_in_transaction("test.effect", "key-1", "owner-1", lease=lease)
    assert 3.5 < held.value.retry_after <= 4 + ledger.HELD_RETRY_MARGIN_SECONDS
    db.session.execute(update(LedgerEntry).values(locked_until=func.now() - timedelta(seconds=1)))
    db.session.commit()
    with transaction():
        taken_over = ledger.claim_in_transaction("test.effect", "key-1", "owner-1", lease=lease)
    assert (taken_over.claim, taken_over.attempt) == (ledger.Claim.RESUMED, 2)
