"""Publishing each queue's depth and oldest message age to CloudWatch, once a minute
(beat's `billing.publish_queue_metrics`), for the workers' autoscaling on ECS."""

from __future__ import annotations

from datetime import datetime

from flask import current_app

from billing.adapters.cloudwatch import CloudWatchMetrics, QueueSample
from billing.extensions import db
from billing.operations.queues import QueueState, database_now, queue_states
from billing.platform import context
from billing.platform.logging import get_logger

log = get_logger(__name__)


def _age_seconds(sent_at: datetime | None, now: datetime) -> float:
    if sent_at is None:
        return 0.0
    return max(0.0, (now - sent_at).total_seconds())


def queue_samples(states: list[QueueState], now: datetime) -> list[QueueSample]:
    return [
        QueueSample(state.name, state.depth, _age_seconds(state.oldest_message_sent_at, now))
        for state in states
    ]


def _cloudwatch(namespace: str) -> CloudWatchMetrics:
    # One client per app (and so per worker process): building a boto3 client costs more
    # than the call it makes.
    metrics = current_app.extensions.get("billing.cloudwatch")
    if not isinstance(metrics, CloudWatchMetrics) or metrics.namespace != namespace:
        metrics = CloudWatchMetrics(namespace)
        current_app.extensions["billing.cloudwatch"] = metrics
    return metrics


def publish_queue_metrics() -> int:
    """Put QueueDepth and OldestMessageAgeSeconds of every queue; returns how many queues
    were published: 0, touching nothing, when CLOUDWATCH_NAMESPACE is unset."""
    namespace = context.settings().cloudwatch_namespace
    if not namespace:
        return 0
    states = queue_states()
    # Ages on the database's clock, the one every outbox timestamp was written with.
    samples = queue_samples(states, database_now())
    # Read-only; ended before the network call, as every transaction here is.
    db.session.commit()
    _cloudwatch(namespace).put_queue_samples(samples)
    log.debug(
        "queue_metrics.published",
        namespace=namespace,
        depths={sample.queue: sample.depth for sample in samples},
    )
    return len(samples)
