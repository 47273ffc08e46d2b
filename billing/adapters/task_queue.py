"""Publishing recorded jobs to the Celery broker by name (the relay's only outside call)."""

from __future__ import annotations

import math
import time
from typing import Any, Protocol
from urllib.parse import urlparse

from celery import Celery

from billing.adapters import redis_transport
from billing.config import Settings
from billing.platform import jobs
from billing.platform.jobs import JOB_PRIORITY, queue_for
from billing.webhooks.rules import DRAIN_BUDGET_SECONDS


class JobPublisher(Protocol):
    def publish(self, job_id: str, job_name: str, request_id: str | None) -> None: ...

    def ping(self) -> None: ...


def celery_settings(broker_url: str) -> dict[str, Any]:
    """Settings shared by the publisher and the workers, so both speak the same protocol."""
    settings: dict[str, Any] = {
        "broker_url": broker_url,
        # No result backend: the outbox, not Celery, holds every job's state and outcome
        # (GET /v1/jobs/{id}). Without one, a publish also never waits on a result store.
        "result_backend": None,
        # The disabled backend has no state, so one instance serves every thread. Otherwise
        # Celery builds one per thread, each time scanning every installed package's entry
        # points, which delays each gunicorn thread's and worker thread's first job.
        "result_backend_thread_safe": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Longer than the longest task (a PDF render, a Stripe call with its timeouts),
        # or Redis would hand a running task to a second worker.
        "broker_transport_options": {"visibility_timeout": 3600},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": "billing",
        "enable_utc": True,
    }
    if urlparse(broker_url).scheme in ("redis", "rediss"):
        settings["broker_transport"] = redis_transport.TRANSPORT
    return settings


# After the soft limit raises SoftTimeLimitExceeded inside a job, this long to record its
# outcome (a retry, through the runner) before the hard limit kills the pool process.
HARD_LIMIT_GRACE_SECONDS = 30
# The nightly and hourly runs commit item by item and the next run carries on, so cutting
# one short loses nothing; they end before the broker's one-hour visibility timeout would
# hand their message to a second worker.
LONG_RUN_SOFT_LIMIT_SECONDS = 50 * 60


def task_time_limits(settings: Settings) -> dict[str, dict[str, float]]:
    """Celery's soft and hard time limits per task, as `task_annotations`.

    Celery enforces them in the prefork pool (the pdf and mail workers); its thread pool,
    which the billing worker runs, ignores them: there a job is bounded by its own
    timeouts (STRIPE_TIMEOUT_SECONDS per call, the runs' per-item commits). A job's hard
    limit stays under OUTBOX_LEASE_SECONDS, so the sweeper never re-sends a job that may
    still be running."""
    stripe_job = 2 * settings.stripe_timeout_seconds + 20
    soft = {
        # At most two Stripe calls (a look-up by ledger key, then the create) of up to
        # STRIPE_TIMEOUT_SECONDS each, plus the PostgreSQL phases around them.
        jobs.SYNC_CUSTOMER: stripe_job,
        jobs.CHARGE_INVOICE: stripe_job,
        jobs.REFUND_INVOICE: stripe_job,
        jobs.PROCESS_STRIPE_EVENT: stripe_job,
        # One VIES call, bounded by VIES_TIMEOUT_SECONDS, and two short transactions.
        jobs.CHECK_VAT_EVIDENCE: settings.vies_timeout_seconds + 20,
        # Rendering even a long invoice takes a small share of this; the rest is one
        # storage put, bounded by botocore's own timeouts. Rendering again is harmless.
        jobs.RENDER_INVOICE_PDF: 120,
        jobs.RENDER_CREDIT_NOTE_PDF: 120,
        # A kept connection found dead (the NOOP), a reconnect and the send: three
        # MAIL_TIMEOUTs, plus the job's statements.
        jobs.SEND_EMAIL: 3 * settings.mail["MAIL_TIMEOUT"] + 15,
        # Beat's frequent tasks (every 15 s to every minute): one transaction or one
        # CloudWatch put each, worthless once a later run has started.
        jobs.RECONCILE_CHARGES: 50,
        jobs.PUBLISH_QUEUE_METRICS: 50,
        # Re-publishes what ran out of lease; whatever is left, the next sweep takes.
        jobs.SWEEP_OUTBOX: 120,
        # One DELETE of expired keys, hourly.
        jobs.PURGE_IDEMPOTENCY_KEYS: 600,
        # A drain starts no POST after its budget; the last ones run to their own
        # timeouts (the connect budget and the answer's), then one commit.
        jobs.DELIVER_WEBHOOK: math.ceil(
            DRAIN_BUDGET_SECONDS
            + settings.webhook_connect_timeout_seconds
            + settings.webhook_timeout_seconds
        )
        + 30,
        jobs.SEND_SELLER_NOTICE: 3 * settings.mail["MAIL_TIMEOUT"] + 15,
        # A batch of events to deliveries per transaction, then the releases.
        jobs.DISPATCH_EVENTS: 50,
        # Batched DELETEs of events past their retention, nightly.
        jobs.PRUNE_EVENTS: 600,
        jobs.RUN_BILLING: LONG_RUN_SOFT_LIMIT_SECONDS,
        jobs.RUN_DUNNING: LONG_RUN_SOFT_LIMIT_SECONDS,
        # Like the billing run, one transaction per subscription: what is left, the next
        # hour's run tells.
        jobs.NOTIFY_TRIALS_ENDING: LONG_RUN_SOFT_LIMIT_SECONDS,
        jobs.RECONCILE_LEDGER: LONG_RUN_SOFT_LIMIT_SECONDS,
    }
    return {
        name: {"soft_time_limit": limit, "time_limit": limit + HARD_LIMIT_GRACE_SECONDS}
        for name, limit in soft.items()
    }


class BrokerUnavailable(RuntimeError):
    pass


class CeleryJobPublisher:
    """Sends a job id to its queue; the worker reads the rest from the outbox."""

    # After a failed publish, requests stop trying for a while: each try against a dead
    # Redis costs seconds (redis-py's own reconnect backoff), and the recorded job loses
    # nothing by waiting for the sweeper instead.
    PAUSE_AFTER_FAILURE_SECONDS = 10.0

    def __init__(self, broker_url: str) -> None:
        self._paused_until = 0.0
        self._celery = Celery("billing-relay", set_as_current=False)
        self._celery.conf.update(celery_settings(broker_url))
        # A publish that cannot reach Redis must fail fast: the job stays recorded and the
        # sweeper sends it later, so the web request need not wait for the broker.
        self._celery.conf.broker_transport_options = {
            **self._celery.conf.broker_transport_options,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        }

    def publish(self, job_id: str, job_name: str, request_id: str | None) -> None:
        if time.monotonic() < self._paused_until:
            raise BrokerUnavailable("the broker failed recently; the sweeper will publish")
        try:
            self._celery.send_task(
                job_name,
                kwargs={"job_id": job_id},
                queue=queue_for(job_name),
                headers={"request_id": request_id} if request_id else None,
                # Behind beat's maintenance tasks (jobs.MAINTENANCE_PRIORITY), which must
                # not wait for a backlog of jobs to drain.
                priority=JOB_PRIORITY,
                retry=False,
                # What Celery would write itself (for logs and Flower), without running its
                # general-purpose saferepr, a needless cost on every publish.
                argsrepr="()",
                kwargsrepr=repr({"job_id": job_id}),
                # The message goes to the default exchange, straight onto the queue's list:
                # no binding is read, so declaring one on every publish (kombu's default,
                # cached per connection yet still costly on every publish) buys nothing. The
                # workers declare the queues they consume.
                declare=[],
            )
        except Exception:
            self._paused_until = time.monotonic() + self.PAUSE_AFTER_FAILURE_SECONDS
            raise

    def ping(self) -> None:
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
