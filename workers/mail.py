"""Tasks of the `mail` queue: one email per task, sent at most once through the ledger."""

from __future__ import annotations

from celery import Task, shared_task

from billing.notifications import emails, seller_notices
from billing.platform import jobs
from workers.runner import run_outbox_job


@shared_task(name=jobs.SEND_EMAIL, bind=True)
def send_email(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, emails.send_email, start=emails.start_sending)


@shared_task(name=jobs.SEND_SELLER_NOTICE, bind=True)
def send_seller_notice(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, seller_notices.send_seller_notice)
