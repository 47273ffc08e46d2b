"""Each worker and beat serves its own metrics on METRICS_PORT (unset: none served).

A worker's tasks run in its pool (forked processes for pdf and mail, threads for billing),
so the counts live in prometheus_client's multiprocess files: get_celery points
PROMETHEUS_MULTIPROC_DIR at a directory of this process group before anything imports
prometheus_client, and the main process serves the sum of every file in it. Queue depth
and the outbox's lag are states, not events: the web's /metrics reports them, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from billing.platform.logging import get_logger
from billing.platform.metrics_multiprocess import ENV as MULTIPROC_DIR_ENV
from billing.platform.metrics_multiprocess import remove_stale_files, shares_values

log = get_logger(__name__)

PORT_ENV = "METRICS_PORT"


def metrics_port() -> int | None:
    raw = os.environ.get(PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        log.error("metrics.port_invalid", value=raw, variable=PORT_ENV)
        return None


def _multiprocess_dir() -> Path | None:
    return Path(os.environ[MULTIPROC_DIR_ENV]) if shares_values() else None


def forget_earlier_runs() -> None:
    """Wipe what an earlier process group left in a configured directory; before the pool
    forks, so that only this process's own (open) files are there to keep."""
    path = _multiprocess_dir()
    if metrics_port() is not None and path is not None:
        remove_stale_files(path, keep_pid=os.getpid())


def serve_metrics() -> None:
    port = metrics_port()
    if port is None:
        return
    path = _multiprocess_dir()
    registry: Any = REGISTRY  # kept in memory (nothing set up the directory): this process's
    if path is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(path))
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        # The worker's real work goes on; only its metrics are missing (and the scrape says so).
        log.error("metrics.port_unavailable", port=port, error=str(exc))
        return
    log.info("metrics.serving", port=port, multiprocess_dir=str(path) if path else None)


@signals.worker_init.connect
def _forget_earlier_worker_runs(**_: Any) -> None:
    forget_earlier_runs()


@signals.worker_ready.connect
def _serve_worker_metrics(**_: Any) -> None:
    # Once the worker consumes: a target that answers is a worker that works.
    serve_metrics()


@signals.beat_init.connect
def _serve_beat_metrics(**_: Any) -> None:
    forget_earlier_runs()
    serve_metrics()


@signals.worker_process_shutdown.connect
def _forget_pool_process(pid: int, **_: Any) -> None:
    # A pool process's counters stay counted; only its live gauges (none yet) would go.
    if _multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)
