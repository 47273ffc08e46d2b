"""PostgreSQL advisory locks for scheduled jobs: one run at a time across every process,
even when a second beat was started by mistake. Per-item ledger entries make a doubled
run harmless anyway; the lock makes it cheap."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from billing.extensions import db
from billing.platform.logging import get_logger

log = get_logger(__name__)


def lock_id(name: str) -> int:
    """A stable signed 64-bit key for `name`, as pg_advisory_lock takes."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(name: str) -> Iterator[bool]:
    """Hold the session-level advisory lock `name` for the block; yields False (and runs
    nothing of its own) when another process holds it. The lock lives on a connection of
    its own, so the block's transactions commit freely."""
    with db.engine.connect() as connection:
        taken = bool(
            connection.execute(
                text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id(name)}
            ).scalar_one()
        )
        connection.commit()
        if not taken:
            log.info("scheduled_job.skipped_lock_held", job=name)
        try:
            yield taken
        finally:
            if taken:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id(name)})
                connection.commit()
