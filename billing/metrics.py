"""Prometheus metrics: one catalogue, so every name and label set is defined once.

Counters and histograms are updated where the event happens (services and the job
runner). Under gunicorn and Celery's prefork pool several processes update them, so
prometheus_client's multiprocess mode is used whenever PROMETHEUS_MULTIPROC_DIR is set
(it must be set before this module is first imported: gunicorn.conf.py and the worker
entry point do that). Values that are a state of the database or the broker rather than
a count of events (queue depth, outbox lag, attempts in unknown) are read when scraped.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CHARGES = Counter(
    "billing_charges_total",
    "Charge attempts by outcome (succeeded, declined, requires_action, unknown, failed).",
    ["outcome"],
)
TASKS = Counter(
    "billing_tasks_total",
    "Outbox jobs run by a worker, by queue, job name and outcome "
    "(succeeded, retry, failed, dead_lettered, skipped).",
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
    "Stripe webhook deliveries by event type and outcome "
    "(processed, duplicate, ignored, bad_signature, failed).",
    ["type", "outcome"],
)
EMAILS = Counter(
    "billing_emails_total",
    "Customer emails by kind and outcome (sent, skipped, retry, rejected).",
    ["kind", "outcome"],
)
PDF_RENDER_SECONDS = Histogram(
    "billing_pdf_render_seconds",
    "Time to render one invoice PDF.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
DUPLICATE_CHARGES = Counter(
    "billing_duplicate_charges_found_total",
    "Invoices the reconciler found charged more than once (should stay 0; alert on any).",
)
