"""Tasks of the `pdf` queue: rendering is slow, so it never delays a charge or an email."""

from __future__ import annotations

from celery import Task, shared_task

from billing.documents import documents
from billing.platform import jobs
from workers.runner import run_outbox_job


@shared_task(name=jobs.RENDER_INVOICE_PDF, bind=True)
def render_invoice(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, documents.render_invoice)


@shared_task(name=jobs.RENDER_CREDIT_NOTE_PDF, bind=True)
def render_credit_note(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, documents.render_credit_note)
