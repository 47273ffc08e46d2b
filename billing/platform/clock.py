"""The service's idea of "now": the real clock, unless a test has moved it.

Scheduled work (the billing run, dunning) asks this clock, never `datetime.now()`, so that
a test can walk a subscription through forty days the way Stripe's test clocks do. The
moved clock is per process; tests that move it run the scheduled jobs in-process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

_frozen: datetime | None = None


def now() -> datetime:
    return _frozen if _frozen is not None else datetime.now(UTC)


def today() -> date:
    return now().date()


def set_now(moment: datetime) -> None:
    """Freeze the clock at `moment` (timezone-aware) until `reset()`."""
    global _frozen
    if moment.tzinfo is None:
        raise ValueError("the clock keeps aware datetimes; pass tzinfo=UTC")
    _frozen = moment


def advance(delta: timedelta) -> datetime:
    set_now(now() + delta)
    return now()


def reset() -> None:
    global _frozen
    _frozen = None


@contextmanager
def frozen_at(moment: datetime) -> Iterator[datetime]:
    previous = _frozen
    set_now(moment)
    try:
        yield moment
    finally:
        globals()["_frozen"] = previous
