"""Recovery in seconds, not leases: the sweeper asks the broker which messages still wait
and which workers still beat, against real Redis and PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import func, update

from billing.adapters.broker import WORKERS_KEY, WORKERS_SINCE_KEY, BrokerView
from billing.extensions import db
from billing.models import OutboxJob
from billing.platform import outbox
from billing.platform.outbox import LIVENESS_WINDOW, SENT_GRACE


def _job(job_id: str) -> OutboxJob:
    db.session.expire_all()
    job = db.session.get(OutboxJob, job_id)
    assert job is not None
    return job


def _sent_ago(job_id: str, seconds: float) -> None:
    db.session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job_id)
        .values(sent_at=func.now() - timedelta(seconds=seconds))
    )
    db.session.commit()


def _started_by(job_id: str, worker: str, seconds_ago: float) -> outbox.StartedJob:
    started = outbox.start_job(job_id, worker=worker)
    assert started is not None
    db.session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job_id)
        .values(started_at=func.now() - timedelta(seconds=seconds_ago))
    )
    db.session.commit()
    return started


def _registry_since(redis_client, seconds_ago: float) -> None:
    redis_client.set(WORKERS_SINCE_KEY, time.time() - seconds_ago)


def test_a_job_waiting_in_its_queue_is_not_sent_again_however_long_it_waits(
    make_customer, redis_client
):
    job_id = make_customer()["sync_job"]
    _sent_ago(job_id, 3600)
    db.session.execute(update(OutboxJob).values(lease_expires_at=func.now() - timedelta(seconds=1)))
    db.session.commit()
    assert outbox.sweep() == 0
    assert redis_client.llen("billing\x06\x163") == 1


def test_a_job_whose_message_the_broker_lost_is_sent_again_once_past_the_grace(
    make_customer, redis_client
):
    job_id = make_customer()["sync_job"]  # sent, with a five-minute lease
    redis_client.flushdb()  # the broker forgets the message
    assert outbox.sweep() == 0  # just published: it may still be on its way
    _sent_ago(job_id, SENT_GRACE.total_seconds() + 1)
    assert outbox.sweep() == 1
    assert redis_client.llen("billing\x06\x163") == 1
    job = _job(job_id)
    assert job.state == "sent"
    assert outbox.sweep() == 0  # found in its queue again


def test_after_a_long_scan_of_the_queues_the_next_sweeps_rest_and_take_nothing_for_lost(
    make_customer, redis_client, monkeypatch
):
    from billing.adapters import broker

    monkeypatch.setattr(broker, "SCAN_REST_FROM_SECONDS", 0.0)  # every scan counts as long
    monkeypatch.setattr(broker, "SCAN_REST_FACTOR", 1_000_000)
    job_id = make_customer()["sync_job"]
    _sent_ago(job_id, SENT_GRACE.total_seconds() + 1)
    assert outbox.sweep() == 0  # scanned: the message waits in its queue
    assert redis_client.pttl(broker.SCAN_REST_KEY) > 0
    redis_client.delete(*broker.queue_keys("billing"))  # now the broker loses it
    db.session.execute(update(OutboxJob).values(lease_expires_at=func.now() - timedelta(seconds=1)))
    db.session.commit()
    assert outbox.sweep() == 0  # resting: neither lost nor expired while unread
    redis_client.delete(broker.SCAN_REST_KEY)
    assert outbox.sweep() == 1  # the next scan finds it gone
    assert _job(job_id).state == "sent"


def test_a_running_job_whose_worker_stopped_beating_is_sent_again_and_its_old_run_fenced(
    app, make_customer, redis_client
):
    job_id = make_customer()["sync_job"]
    broker: BrokerView = app.extensions["billing.broker_view"]
    broker.worker_beats("worker-a")
    broker.worker_beats("worker-b")
    _registry_since(redis_client, 60)
    stale = _started_by(job_id, "worker-a", seconds_ago=LIVENESS_WINDOW.total_seconds() + 5)
    # worker-a's last beat was long ago; worker-b beats on.
    redis_client.zadd(WORKERS_KEY, {"worker-a": time.time() - 60})
    assert outbox.sweep() == 1
    job = _job(job_id)
    assert job.state == "sent"
    restarted = outbox.start_job(job_id, worker="worker-b")
    assert restarted is not None and restarted.attempts == stale.attempts + 1
    assert not outbox.job_succeeded(stale)  # the dead run can no longer end the job


def test_a_running_job_of_a_beating_worker_is_left_alone(app, make_customer, redis_client):
    job_id = make_customer()["sync_job"]
    broker: BrokerView = app.extensions["billing.broker_view"]
    broker.worker_beats("worker-a")
    _registry_since(redis_client, 60)
    _started_by(job_id, "worker-a", seconds_ago=600)
    assert outbox.sweep() == 0
    assert _job(job_id).state == "running"


def test_after_a_broker_flush_no_worker_is_presumed_dead_for_a_window(
    app, make_customer, redis_client
):
    job_id = make_customer()["sync_job"]
    _started_by(job_id, "worker-a", seconds_ago=600)
    redis_client.flushdb()  # the registry is gone with everything else
    broker: BrokerView = app.extensions["billing.broker_view"]
    broker.worker_beats("worker-b")  # the first beat after the flush
    assert outbox.sweep() == 0
    _registry_since(redis_client, LIVENESS_WINDOW.total_seconds() + 1)
    assert outbox.sweep() == 1  # worker-a has had a whole window to beat, and did not


def test_a_retry_is_parked_in_the_outbox_and_published_when_due(make_customer, redis_client):
    job_id = make_customer()["sync_job"]
    run = outbox.start_job(job_id, worker="worker-a")
    assert run is not None
    redis_client.flushdb()
    assert outbox.job_will_retry(run, "Stripe unavailable", countdown=30)
    job = _job(job_id)
    assert job.state == "pending" and job.sent_at is None
    assert outbox.sweep() == 0  # not due for another half minute
    assert redis_client.llen("billing\x06\x163") == 0
    db.session.execute(update(OutboxJob).values(lease_expires_at=func.now() - timedelta(seconds=1)))
    db.session.commit()
    assert outbox.sweep() == 1
    assert _job(job_id).state == "sent"
    assert redis_client.llen("billing\x06\x163") == 1


def test_a_beating_worker_is_listed_alive_and_a_silent_one_is_not(app, redis_client):
    broker: BrokerView = app.extensions["billing.broker_view"]
    broker.worker_beats("worker-a")
    redis_client.zadd(WORKERS_KEY, {"worker-b": time.time() - 60})
    live = broker.live_workers(10)
    assert live.alive == {"worker-a"}
    assert not live.complete  # the registry was born just now
