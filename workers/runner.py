"""Running a recorded job: claim it in the outbox, call its one service, record the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from billing.logging import bind_context, get_logger
from billing.services import outbox
from billing.services.errors import HeldElsewhere, PermanentJobError, TransientJobError
from billing.services.outbox import MAX_ATTEMPTS

log = get_logger(__name__)

# 2 s doubling, capped at 5 minutes, with full jitter so that retries of many jobs hit
# by one outage do not arrive together.
BACKOFF_FACTOR = 2
BACKOFF_MAX_SECONDS = 300


def run_outbox_job(task: Task, job_id: str, handler: Callable[..., Any]) -> None:
    job = outbox.start_job(job_id)
    if job is None:
        # Finished already, or held by a live worker: a redelivery, harmless by design.
        log.info("job.skipped_duplicate_delivery", job_id=job_id)
        return
    bind_context(job_id=job.id, job_name=job.name, request_id=job.request_id, **job.args)
    log.info("job.started", attempt=job.attempts)
    try:
        with outbox.running(job):
            handler(**job.args)
    except PermanentJobError as exc:
        outbox.job_failed(job, str(exc))
        log.error("job.failed", error=str(exc))
        return
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TransientJobError):
            log.exception("job.unexpected_error")
        waited = isinstance(exc, HeldElsewhere)
        if job.attempts >= MAX_ATTEMPTS and not waited:
            outbox.job_dead_lettered(job, error)
            log.error("job.dead_lettered", attempts=job.attempts, error=error)
            return
        retry_after = getattr(exc, "retry_after", None)
        countdown = retry_after or get_exponential_backoff_interval(
            BACKOFF_FACTOR, job.attempts, BACKOFF_MAX_SECONDS, full_jitter=True
        )
        if not outbox.job_will_retry(job, error, countdown, spent_attempt=not waited):
            return  # swept and started again by another worker: that run owns it now
        log.warning("job.will_retry", attempts=job.attempts, countdown=countdown, error=error)
        # Our own count (the outbox's attempts) decides; Celery's only backs it up.
        raise task.retry(countdown=countdown, exc=exc, max_retries=MAX_ATTEMPTS) from exc
    outbox.job_succeeded(job)
    log.info("job.succeeded")
