"""Tasks of the `billing` queue: ids in, one service call, done."""

from __future__ import annotations

from celery import Task, shared_task

from billing import jobs
from billing.services import (
    charges,
    customers,
    ledger,
    outbox,
    refunds,
    stripe_events,
    subscriptions,
)
from workers.runner import run_outbox_job


@shared_task(name=jobs.SYNC_CUSTOMER, bind=True)
def sync_customer(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, customers.sync_customer_to_stripe)


@shared_task(name=jobs.CHARGE_INVOICE, bind=True)
def charge_invoice(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, charges.execute_charge)


@shared_task(name=jobs.REFUND_INVOICE, bind=True)
def refund_invoice(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, refunds.execute_refund)


@shared_task(name=jobs.PROCESS_STRIPE_EVENT, bind=True)
def process_stripe_event(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, stripe_events.process_event)


@shared_task(name=jobs.RECONCILE_CHARGES)
def reconcile_charges() -> int:
    return charges.reconcile_stuck_attempts() + refunds.reconcile_stuck_refunds()


@shared_task(name=jobs.SWEEP_OUTBOX)
def sweep_outbox() -> int:
    return outbox.sweep()


@shared_task(name=jobs.PURGE_IDEMPOTENCY_KEYS)
def purge_idempotency_keys() -> int:
    return ledger.purge_expired()


@shared_task(name=jobs.RUN_BILLING)
def run_billing() -> int:
    return subscriptions.run_billing().invoices_created
