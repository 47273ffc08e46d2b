"""Names of follow-up jobs and the queue each runs on.

Services name jobs; the relay sends them by name; `workers/` registers a task under
each name. The queue is the name's first segment, so routing needs no table.
"""

from __future__ import annotations

QUEUES = ("billing", "pdf", "mail", "webhooks")

# Broker priorities (kombu's Redis transport: a lower number is taken first). Beat's own
# tasks (the outbox sweeper, the charge reconciler...) jump the queue's backlog: they are
# the safety net, and a backlog is exactly when it must not wait behind the work (with
# their `expires`, a task that waited too long would even be dropped unrun).
MAINTENANCE_PRIORITY = 0
JOB_PRIORITY = 3

SYNC_CUSTOMER = "billing.sync_customer"
CHARGE_INVOICE = "billing.charge_invoice"
RECONCILE_CHARGES = "billing.reconcile_charges"
REFUND_INVOICE = "billing.refund_invoice"
PROCESS_STRIPE_EVENT = "billing.process_stripe_event"
CHECK_VAT_EVIDENCE = "billing.check_vat_evidence"
RENDER_INVOICE_PDF = "pdf.render_invoice"
RENDER_CREDIT_NOTE_PDF = "pdf.render_credit_note"
SEND_EMAIL = "mail.send_email"
SWEEP_OUTBOX = "billing.sweep_outbox"
PURGE_IDEMPOTENCY_KEYS = "billing.purge_idempotency_keys"
RUN_BILLING = "billing.run_billing"
RUN_DUNNING = "billing.run_dunning"
NOTIFY_TRIALS_ENDING = "billing.notify_trials_ending"
PUBLISH_QUEUE_METRICS = "billing.publish_queue_metrics"
RECONCILE_LEDGER = "billing.reconcile_ledger"
PRUNE_EVENTS = "billing.prune_events"
SEND_SELLER_NOTICE = "mail.send_seller_notice"
DELIVER_WEBHOOK = "webhooks.deliver"
DISPATCH_EVENTS = "webhooks.dispatch_events"


def queue_for(job_name: str) -> str:
    queue = job_name.split(".", 1)[0]
    if queue not in QUEUES:
        raise ValueError(f"job {job_name!r} names no known queue (one of {', '.join(QUEUES)})")
    return queue
