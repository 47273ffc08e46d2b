"""Tasks of the `billing` queue: ids in, one service call, done."""

from __future__ import annotations

from datetime import timedelta

from celery import Task, shared_task

from billing.charging import charges, reconciliation
from billing.customers import customers
from billing.dunning import dunning
from billing.events import events
from billing.operations import queue_metrics
from billing.platform import context, jobs, ledger, locks, outbox
from billing.refunds import refunds
from billing.stripe_events import stripe_events
from billing.subscriptions import subscriptions
from billing.taxes import evidence
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


@shared_task(name=jobs.CHECK_VAT_EVIDENCE, bind=True)
def check_vat_evidence(self: Task, job_id: str) -> None:
    run_outbox_job(self, job_id, evidence.check_vat_evidence)


# Scheduled jobs: each under its advisory lock, so that a doubled beat (or a run that
# outlasts its interval) never has two copies working at once.


@shared_task(name=jobs.RECONCILE_CHARGES)
def reconcile_charges() -> int:
    with locks.exclusive(jobs.RECONCILE_CHARGES) as taken:
        if not taken:
            return 0
        return charges.reconcile_stuck_attempts() + refunds.reconcile_stuck_refunds()


@shared_task(name=jobs.SWEEP_OUTBOX)
def sweep_outbox() -> int:
    with locks.exclusive(jobs.SWEEP_OUTBOX) as taken:
        return outbox.sweep() if taken else 0


@shared_task(name=jobs.PURGE_IDEMPOTENCY_KEYS)
def purge_idempotency_keys() -> int:
    with locks.exclusive(jobs.PURGE_IDEMPOTENCY_KEYS) as taken:
        return ledger.purge_expired() if taken else 0


@shared_task(name=jobs.PUBLISH_QUEUE_METRICS)
def publish_queue_metrics() -> int:
    with locks.exclusive(jobs.PUBLISH_QUEUE_METRICS) as taken:
        return queue_metrics.publish_queue_metrics() if taken else 0


@shared_task(name=jobs.RUN_BILLING)
def run_billing() -> int:
    return subscriptions.run_billing().invoices_created


@shared_task(name=jobs.NOTIFY_TRIALS_ENDING)
def notify_trials_ending() -> int:
    """Hourly: trials ending within TRIAL_WILL_END_DAYS get their event and email, once
    (the subscription's row and its notified_at guard that; the lock saves the work)."""
    with locks.exclusive(jobs.NOTIFY_TRIALS_ENDING) as taken:
        return subscriptions.notify_trials_ending() if taken else 0


@shared_task(name=jobs.RECONCILE_LEDGER)
def reconcile_ledger() -> int:
    """Nightly: our ledger against Stripe's PaymentIntents of the last two days; every
    duplicate charge is an error event and counts on billing_duplicate_charges_found_total.
    Returns the findings left open."""
    with locks.exclusive(jobs.RECONCILE_LEDGER) as taken:
        if not taken:
            return 0
        report = reconciliation.reconcile_last_two_days()
        return len(report.open_findings) if report is not None else 0


@shared_task(name=jobs.RUN_DUNNING)
def run_dunning() -> int:
    """The nightly dunning run (it takes the `dunning` advisory lock itself)."""
    run = dunning.run_dunning()
    return sum(run.steps.values()) if run is not None else 0


@shared_task(name=jobs.PRUNE_EVENTS)
def prune_events() -> int:
    """Daily: events past their retention go, with their webhook deliveries."""
    with locks.exclusive(jobs.PRUNE_EVENTS) as taken:
        if not taken:
            return 0
        return events.prune(timedelta(days=context.settings().event_retention_days))
