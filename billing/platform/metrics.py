"""Prometheus metrics: one catalogue, so every name and label set is defined once.

Counters and histograms are updated where the event happens (services and the job
runner). Under gunicorn and Celery's prefork pool several processes update them, so
prometheus_client's multiprocess mode is used whenever PROMETHEUS_MULTIPROC_DIR is set
(it must be set before prometheus_client is first imported, because prometheus_client
picks its value class at import: gunicorn.conf.py and workers.get_celery do that, through
billing.platform.metrics_multiprocess). Values that are a state of the database or the broker
rather than a count of events (queue depth, outbox lag, attempts in unknown) are read when
scraped, by billing.api.metrics.
"""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

CHARGES = Counter(
    "billing_charges_total",
    "Charge attempts by the outcome recorded for them (succeeded, failed, requires_action, "
    "unknown, canceled); a webhook that changes an attempt's outcome counts again.",
    ["outcome"],
)
TASKS = Counter(
    "billing_tasks_total",
    "Outbox jobs run by a worker, by queue, job name and outcome (succeeded, retry, failed, "
    "dead_lettered; skipped: a redelivery of a job finished or held elsewhere; superseded: "
    "the job was swept and started again meanwhile, so that run records its outcome).",
    ["queue", "task", "outcome"],
)
TASK_LATENCY = Histogram(
    "billing_task_duration_seconds",
    "Time from a job's start to its end, by queue and job name.",
    ["queue", "task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
WEBHOOK_EVENTS = Counter(
    "billing_webhook_events_total",
    "Stripe webhook deliveries by event type and outcome: received (stored, new), duplicate "
    "(stored already), bad_signature (type 'unverified'), then processed, ignored or failed "
    "when the billing worker applies it.",
    ["type", "outcome"],
)
EMAILS = Counter(
    "billing_emails_total",
    "Customer emails by kind and outcome: sent, retry (deferred: 4xx, timeout, refused "
    "connection), rejected (5xx: failed for good), skipped (sent already).",
    ["kind", "outcome"],
)
PDF_RENDER_SECONDS = Histogram(
    "billing_pdf_render_seconds",
    "Time to render one invoice PDF.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
STRIPE_RATE_LIMITED = Counter(
    "billing_stripe_rate_limited_total",
    "Stripe's 429 answers: retried after the advised wait, or passed_on to the job (which "
    "comes back later without spending an attempt) once the wait grew too long.",
    ["outcome"],
)
DUPLICATE_CHARGES = Counter(
    "billing_duplicate_charges_found_total",
    "Invoices the reconciler found charged more than once (should stay 0; alert on any).",
)
AMOUNT_MISMATCHES = Counter(
    "billing_charge_amount_mismatches_total",
    "PaymentIntents whose amount or currency differ from their charge attempt's, refused "
    "as payment, by where Stripe's answer came from: charge (the charge job) or webhook (a "
    "webhook, or an outcome adopted later by the 3-D Secure follow-up or the reconciler); "
    "should stay 0, alert on any.",
    ["source"],
)


WEBHOOK_DELIVERIES = Counter(
    "billing_webhook_deliveries_total",
    "Tries at delivering an event to a webhook endpoint, by outcome: delivered (2xx), "
    "failed (any other answer, or none; retried), gone (410; the endpoint is disabled), "
    "refused (its URL now resolves to an address we do not send to).",
    ["outcome"],
)


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> Any: ...


_ON_COMMIT = "billing.metrics_on_commit"


def count_on_commit(session: Session, counter: _Incrementable) -> None:
    """Count an outcome once the transaction recording it commits, and not if it rolls
    back: for outcomes decided deep inside a use case's transaction."""
    session.info.setdefault(_ON_COMMIT, []).append(counter)


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    for counter in session.info.pop(_ON_COMMIT, ()):
        counter.inc()


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    # After a commit the list is gone already; what is left when the outermost
    # transaction ends was rolled back (or closed unfinished) and never happened.
    if transaction.parent is None:
        session.info.pop(_ON_COMMIT, None)
