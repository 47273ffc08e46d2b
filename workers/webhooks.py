"""Tasks of the `webhooks` queue: deliveries to the company's endpoints, kept apart so that
a slow receiver never delays invoices or mail."""

from __future__ import annotations

from celery import Task, shared_task

from billing.platform import jobs, locks
from billing.webhooks import deliveries
from workers.runner import run_outbox_job


@shared_task(name=jobs.DELIVER_WEBHOOK, bind=True)
def deliver_webhook(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, deliveries.deliver)


@shared_task(name=jobs.DISPATCH_EVENTS)
def dispatch_events() -> int:
    """Beat's: new events to deliveries, one dispatcher at a time (sequence order)."""
    with locks.exclusive(jobs.DISPATCH_EVENTS) as taken:
        return deliveries.dispatch_events() if taken else 0
