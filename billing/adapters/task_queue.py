"""Publishing recorded jobs to the Celery broker by name (the relay's only outside call)."""

from __future__ import annotations

import time
from typing import Any, Protocol
from urllib.parse import urlparse

from celery import Celery

from billing.adapters import redis_transport
from billing.jobs import JOB_PRIORITY, queue_for


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
        # points: tens of milliseconds on each gunicorn thread's and worker thread's first job.
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
                # general-purpose saferepr on every publish: a tenth of a publish's CPU.
                argsrepr="()",
                kwargsrepr=repr({"job_id": job_id}),
                # The message goes to the default exchange, straight onto the queue's list:
                # no binding is read, so declaring one on every publish (kombu's default,
                # cached per connection yet still a tenth of the CPU) buys nothing. The
                # workers declare the queues they consume.
                declare=[],
            )
        except Exception:
            self._paused_until = time.monotonic() + self.PAUSE_AFTER_FAILURE_SECONDS
            raise

    def ping(self) -> None:
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
