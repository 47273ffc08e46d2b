"""A file that workers and beat touch while their loop runs, for the container health
check (deploy/healthcheck.py): one image serves every role, and only the web role has an
HTTP port to ask. A fresh file says the loop turns; a stale one, that it is stuck or cut
off from Redis, where a worker can do nothing anyway."""

from __future__ import annotations

from pathlib import Path

from billing.logging import get_logger

log = get_logger(__name__)
_warned: set[str] = set()


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
