"""/metrics: Prometheus's text format, for the scrape on the internal network.

Counters and histograms come from every gunicorn worker (their multiprocess files, summed)
or, outside gunicorn, from this process. States are read at scrape time, once, here:
the broker's depth and oldest message per queue, the outbox's unfinished jobs and lag,
charge attempts in unknown, dead letters. A scrape never fails for a missing source: what
could not be read is left out and `billing_scrape_errors{source}` says which.

With METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` is required. Without one
it is open in development and closed in production (BILLING_ENV=production), where the web
refuses to start without a token anyway.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Iterator
from datetime import datetime

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from billing.api.errors import ApiError
from billing.extensions import db
from billing.operations import monitoring, queues
from billing.platform import context
from billing.platform.logging import get_logger
from billing.platform.metrics_multiprocess import shares_values
from billing.webhooks import deliveries

log = get_logger(__name__)

bp = Blueprint("metrics", __name__)


def _end_read() -> None:
    # Read only: end the transaction, hold no snapshot; a dead connection is dropped here.
    with contextlib.suppress(Exception):
        db.session.rollback()


def _age(now: datetime, since: datetime | None) -> float:
    return max((now - since).total_seconds(), 0.0) if since is not None else 0.0


class ServiceStateCollector(Collector):
    """Gauges of the service's state, read from PostgreSQL and Redis when scraped."""

    def collect(self) -> Iterator[Metric]:
        errors = {"broker": 0, "database": 0}
        yield from self._queues(errors)
        yield from self._attention(errors)
        scrape_errors = GaugeMetricFamily(
            "billing_scrape_errors",
            "1 when this scrape could not read that source (its metrics are left out).",
            labels=["source"],
        )
        for source, failed in errors.items():
            scrape_errors.add_metric([source], failed)
        yield scrape_errors

    def _queues(self, errors: dict[str, int]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "billing_queue_depth", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        message_age = GaugeMetricFamily(
            "billing_queue_oldest_message_age_seconds",
            "How long the oldest message waiting in the broker has waited (0: none).",
            labels=["queue"],
        )
        unfinished = GaugeMetricFamily(
            "billing_outbox_unfinished_jobs",
            "Outbox jobs pending, sent or running, per queue.",
            labels=["queue"],
        )
        lag = GaugeMetricFamily(
            "billing_outbox_lag_seconds",
            "Age of the oldest unfinished outbox job, per queue (0: none); also grows for "
            "jobs the broker lost, until the sweeper sends them again.",
            labels=["queue"],
        )
        try:
            now = queues.database_now()
            try:
                states = queues.queue_states()
            except RedisError as exc:
                errors["broker"] = 1
                log.warning("metrics.broker_unavailable", error=str(exc))
                for queue, (jobs, oldest) in queues.outbox_backlog().items():
                    unfinished.add_metric([queue], jobs)
                    lag.add_metric([queue], _age(now, oldest))
            else:
                for state in states:
                    depth.add_metric([state.name], state.depth)
                    message_age.add_metric([state.name], _age(now, state.oldest_message_sent_at))
                    unfinished.add_metric([state.name], state.unfinished_jobs)
                    lag.add_metric([state.name], _age(now, state.oldest_unfinished_created_at))
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never a 500
            errors["database"] = 1
            log.warning("metrics.database_unavailable", error=str(exc))
            return
        finally:
            _end_read()
        yield from (family for family in (depth, message_age, unfinished, lag) if family.samples)

    def _attention(self, errors: dict[str, int]) -> Iterator[Metric]:
        try:
            unknown = monitoring.unknown_charge_attempts()
            dead_letters = monitoring.dead_letters()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never a 500
            errors["database"] = 1
            log.warning("metrics.database_unavailable", error=str(exc))
            return
        finally:
            _end_read()
        yield GaugeMetricFamily(
            "billing_charge_attempts_unknown",
            "Charge attempts whose outcome is unknown (Stripe's answer lost), not reconciled yet.",
            value=unknown,
        )
        family = GaugeMetricFamily(
            "billing_outbox_dead_letters",
            "Jobs dead-lettered or failed for good, waiting for an operator "
            "(`billing dead-letters list`), by queue and state.",
            labels=["queue", "state"],
        )
        for (queue, state), count in sorted(dead_letters.items()):
            family.add_metric([queue, state], count)
        yield family
        yield from self._webhooks(errors)

    def _webhooks(self, errors: dict[str, int]) -> Iterator[Metric]:
        try:
            ages = deliveries.oldest_undelivered_ages()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never a 500
            errors["database"] = 1
            log.warning("metrics.database_unavailable", error=str(exc))
            return
        finally:
            _end_read()
        family = GaugeMetricFamily(
            "billing_webhook_oldest_undelivered_event_age_seconds",
            "Age of the oldest event not yet delivered to an enabled webhook endpoint, per "
            "endpoint (endpoints with nothing undelivered are left out).",
            labels=["endpoint"],
        )
        for endpoint_id, age in sorted(ages.items()):
            family.add_metric([endpoint_id], age)
        yield family


_STATE = CollectorRegistry()
_STATE.register(ServiceStateCollector())


def _event_registry() -> CollectorRegistry:
    if shares_values():
        # Under gunicorn: every worker's counts, from their files.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _check_token() -> None:
    settings = context.settings()
    token = settings.metrics_token.get_secret_value()
    if not token:
        if settings.production:
            # The web's listener is public: a production web without a token never starts
            # (config.PRODUCTION_REQUIRED); anything else serving it keeps it closed.
            raise ApiError(403, "permission_denied", "/metrics needs METRICS_TOKEN in production")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise ApiError(
            401,
            "authentication_required",
            "send the metrics token as 'Authorization: Bearer <METRICS_TOKEN>'",
        )


@bp.get("/metrics")
def metrics() -> Response:
    _check_token()
    body = generate_latest(_event_registry()) + generate_latest(_STATE)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
