"""Running one recorded job in the test's process, retries included."""

from __future__ import annotations

from typing import Any

from billing.extensions import db
from billing.models import OutboxJob
from billing.platform.outbox import MAX_ATTEMPTS


def run_until_settled(task: Any, job_id: str) -> OutboxJob:
    """Apply the job's task, then each retry it parks for the sweeper (at once rather
    than when due), until it ends one way or another; returns the job's row."""
    for _ in range(MAX_ATTEMPTS + 2):
        task.apply(kwargs={"job_id": job_id})
        job = db.session.get(OutboxJob, job_id)
        assert job is not None
        db.session.refresh(job)
        db.session.commit()
        if job.state != "pending":
            return job
    raise AssertionError(f"job {job_id} still pending after {MAX_ATTEMPTS + 2} runs")
