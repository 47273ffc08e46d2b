"""A file that workers and beat touch while their loop runs, for the container health
check (deploy/healthcheck.py): one image serves every role, and only the web role has an
HTTP port to ask. A fresh file says the loop turns; a stale one, that it is stuck or cut
off from Redis, where a worker can do nothing anyway."""

from __future__ import annotations

import time
from pathlib import Path

from billing.adapters.broker import BrokerView
from billing.platform.logging import get_logger

log = get_logger(__name__)
_warned: set[str] = set()
_registry_failing_since: list[float] = []


def touch(path: str | None) -> None:
    if not path:
        return
    try:
        Path(path).touch()
    except OSError as exc:
        # Once per path: the loop calls this every few seconds. The health check then
        # reports the stale file, which is where an operator looks.
        if path not in _warned:
            _warned.add(path)
            log.warning("heartbeat.unwritable", path=path, error=str(exc))


def beat_in_registry(broker: BrokerView, worker_id: str) -> None:
    """Say in Redis that this worker lives, so that the outbox's sweeper can tell its
    running jobs from those of a dead one. A failure is logged once per outage: the
    sweeper then falls back to the jobs' leases, and the beat resumes with Redis."""
    try:
        broker.worker_beats(worker_id)
    except Exception as exc:  # noqa: BLE001 - a missed beat must not stop the worker's loop
        if not _registry_failing_since:
            _registry_failing_since.append(time.monotonic())
            log.warning("heartbeat.registry_unwritable", worker=worker_id, error=str(exc))
        return
    if _registry_failing_since:
        _registry_failing_since.clear()
        log.info("heartbeat.registry_writable", worker=worker_id)
