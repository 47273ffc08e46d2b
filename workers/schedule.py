"""Beat's schedule. Exactly one beat sends it: beat keeps the schedule and a lock in Redis
(celery-redbeat), so a second beat waits idle until the first dies. Every job it starts
also takes an advisory lock and is idempotent, so a doubled run is harmless anyway."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from billing.config import Settings
from billing.platform import jobs


def _ahead_of_jobs(*, expires: float) -> dict[str, Any]:
    """A beat task's send options: taken before any recorded job waiting in its queue
    (see jobs.MAINTENANCE_PRIORITY), and dropped unrun once it waited `expires` seconds."""
    return {"expires": expires, "priority": jobs.MAINTENANCE_PRIORITY}


# Seconds a sweep may wait for a worker thread before a later one supersedes it.
SWEEP_EXPIRES_AT_LEAST = 15.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    sweep_every = timedelta(seconds=settings.outbox_sweep_interval_seconds)
    return {
        "sweep-outbox": {
            "task": jobs.SWEEP_OUTBOX,
            "schedule": sweep_every,
            # A sweep that waited long is superseded by a later one, but not after a single
            # interval: with every worker thread busy (a backlog, workers restarting) a
            # sweep expiring that soon never runs, and lost jobs are never found.
            "options": _ahead_of_jobs(
                expires=max(SWEEP_EXPIRES_AT_LEAST, 3 * sweep_every.total_seconds())
            ),
        },
        # Every quarter minute: an attempt whose job gave up waits at most this long past
        # charges.RECONCILE_AFTER; a pass with nothing to do is one indexed query.
        "reconcile-charges": {
            "task": jobs.RECONCILE_CHARGES,
            "schedule": timedelta(seconds=15),
            "options": _ahead_of_jobs(expires=15),
        },
        # Each queue's depth and oldest message age to CloudWatch, which the ECS workers
        # scale on (a no-op unless CLOUDWATCH_NAMESPACE is set); a late sample is useless.
        "publish-queue-metrics": {
            "task": jobs.PUBLISH_QUEUE_METRICS,
            "schedule": timedelta(minutes=1),
            "options": _ahead_of_jobs(expires=60),
        },
        "purge-idempotency-keys": {
            "task": jobs.PURGE_IDEMPOTENCY_KEYS,
            "schedule": timedelta(hours=1),
            "options": _ahead_of_jobs(expires=3600),
        },
        # Invoices every subscription period that has begun; a run that waited past the
        # next one is superseded by it (the lock and the period key make overlap harmless).
        "billing-run": {
            "task": jobs.RUN_BILLING,
            "schedule": timedelta(hours=1),
            "options": _ahead_of_jobs(expires=3600),
        },
        # Trials ending within TRIAL_WILL_END_DAYS are told so; a notice is at most an
        # hour later than due, and a run that waited past the next is superseded by it.
        "trial-will-end": {
            "task": jobs.NOTIFY_TRIALS_ENDING,
            "schedule": timedelta(hours=1),
            "options": _ahead_of_jobs(expires=3600),
        },
        "dunning": {
            "task": jobs.RUN_DUNNING,
            "schedule": crontab(minute=0, hour=settings.dunning_hour),
            # Late is better than never: a run delayed by a backlog still runs that night.
            "options": _ahead_of_jobs(expires=12 * 3600),
        },
        # New events to their webhook endpoints; deliveries held for order released.
        "dispatch-events": {
            "task": jobs.DISPATCH_EVENTS,
            "schedule": timedelta(seconds=settings.webhook_dispatch_interval_seconds),
            "options": _ahead_of_jobs(
                expires=max(SWEEP_EXPIRES_AT_LEAST, 3 * settings.webhook_dispatch_interval_seconds)
            ),
        },
        "prune-events": {
            "task": jobs.PRUNE_EVENTS,
            "schedule": crontab(minute=15, hour=settings.reconcile_hour),
            "options": _ahead_of_jobs(expires=12 * 3600),
        },
        # Our ledger against Stripe's own PaymentIntents: alerts on any duplicate charge.
        "reconcile-ledger": {
            "task": jobs.RECONCILE_LEDGER,
            "schedule": crontab(minute=30, hour=settings.reconcile_hour),
            "options": _ahead_of_jobs(expires=12 * 3600),
        },
    }
