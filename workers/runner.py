"""Running a recorded job: claim it in the outbox, call its one service, record the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy import Connection

from billing.platform import context, outbox
from billing.platform.errors import HeldElsewhere, PermanentJobError, TransientJobError
from billing.platform.jobs import queue_for
from billing.platform.logging import bind_context, get_logger
from billing.platform.metrics import TASK_LATENCY, TASKS
from billing.platform.outbox import MAX_ATTEMPTS
from workers.liveness import WORKER_ID

log = get_logger(__name__)

# 2 s doubling, capped at 2 minutes, with full jitter so that retries of many jobs hit
# by one outage do not arrive together. The cap bounds how long a job, once its cause
# heals, waits for its next try.
BACKOFF_FACTOR = 2
BACKOFF_MAX_SECONDS = 120


def _count(task: Task, outcome: str, started: float | None = None) -> None:
    queue = queue_for(task.name)
    TASKS.labels(queue=queue, task=task.name, outcome=outcome).inc()
    if started is not None:
        TASK_LATENCY.labels(queue=queue, task=task.name).observe(time.monotonic() - started)


Starter = Callable[..., tuple[outbox.StartedJob | None, dict[str, Any]]]


def run_outbox_job(
    task: Task, job_id: str, handler: Callable[..., Any], *, start: Starter | None = None
) -> None:
    """Claim the job, build its unit of work (outbox.JobWork: the running job, the
    gateways, the connection) and hand it to `handler` with the job's arguments; record
    how the run ended. `start`, when given, starts the job itself together with the
    handler's first read (see outbox.start_job_with) and returns the handler's arguments.
    The job is started in this worker's name (liveness.WORKER_ID), so that it is sent
    again soon if this worker dies with it."""
    if start is None:
        _run(task, job_id, handler, None, None)
        return
    # One pooled connection for the job's single statements: its start with the take, the
    # record, the job's end. Only here: a thread-pool worker's other jobs hold their
    # session's connection while they run, and a second one each could empty the pool.
    with outbox.single_statements() as connection:
        _run(task, job_id, handler, start, connection)


def _run(
    task: Task,
    job_id: str,
    handler: Callable[..., Any],
    start: Starter | None,
    connection: Connection | None,
) -> None:
    if start is None:
        job = outbox.start_job(job_id, worker=WORKER_ID, connection=connection)
        arguments = job.args if job is not None else {}
    else:
        job, arguments = start(job_id, worker=WORKER_ID, connection=connection)
    if job is None:
        # Finished already, or held by a live worker: a redelivery, harmless by design.
        log.info("job.skipped_duplicate_delivery", job_id=job_id)
        _count(task, "skipped")
        return
    bind_context(job_id=job.id, job_name=job.name, request_id=job.request_id, **job.args)
    log.info("job.started", attempt=job.attempts)
    started = time.monotonic()
    work = outbox.JobWork(job, context.gateways(), connection)
    try:
        handler(**arguments, work=work)
    except PermanentJobError as exc:
        recorded = outbox.job_failed(job, str(exc), connection)
        _count(task, "failed" if recorded else "superseded", started)
        log.error("job.failed", error=str(exc))
        return
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        # Waiting for another run's claim, or for Stripe's rate limit, is not a failed
        # try: it does not use up one of the job's attempts.
        waited = isinstance(exc, HeldElsewhere) or getattr(exc, "spends_attempt", True) is False
        if not isinstance(exc, TransientJobError) and not waited:
            log.exception("job.unexpected_error")
        if job.attempts >= MAX_ATTEMPTS and not waited:
            recorded = outbox.job_dead_lettered(job, error, connection)
            _count(task, "dead_lettered" if recorded else "superseded", started)
            log.error("job.dead_lettered", attempts=job.attempts, error=error)
            return
        retry_after = getattr(exc, "retry_after", None)
        countdown = retry_after or get_exponential_backoff_interval(
            BACKOFF_FACTOR, job.attempts, BACKOFF_MAX_SECONDS, full_jitter=True
        )
        if not outbox.job_will_retry(
            job, error, countdown, spent_attempt=not waited, connection=connection
        ):
            _count(task, "superseded", started)
            return  # swept and started again by another worker: that run owns it now
        # The sweeper publishes it when due: this message is done with.
        _count(task, "retry", started)
        log.warning("job.will_retry", attempts=job.attempts, countdown=countdown, error=error)
        return
    recorded = outbox.job_succeeded(job, connection)
    _count(task, "succeeded" if recorded else "superseded", started)
    log.info("job.succeeded")
