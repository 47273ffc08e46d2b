"""What every operator command shares: exit codes, times given on the command line, ages."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

# The exit codes of every `billing` command:
EXIT_OK = 0
# The command ran and its answer needs an operator: discrepancies, no beat, a refusal.
EXIT_ATTENTION = 1
# 2 is click's own: the command line itself was wrong.
# A server (PostgreSQL, Redis, Stripe) did not answer: nothing was concluded.
EXIT_UNREACHABLE = 3

EXIT_CODES_HELP = (
    "3 when PostgreSQL, Redis or Stripe did not answer (nothing was concluded), "
    "2 for a usage error."
)

F = TypeVar("F", bound=Callable[..., Any])


def reports_unreachable(command: F) -> F:
    """Turn a server that did not answer into one clear line and exit code 3."""
    from redis.exceptions import RedisError
    from sqlalchemy.exc import OperationalError

    from billing.adapters.stripe_gateway import StripeRateLimited, StripeUnavailable

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RedisError as exc:
            _unreachable("Redis", exc)
        except OperationalError as exc:
            _unreachable("PostgreSQL", exc.orig or exc)
        except (StripeUnavailable, StripeRateLimited) as exc:
            _unreachable("Stripe", exc)

    return wrapper  # type: ignore[return-value]


def _unreachable(server: str, exc: BaseException) -> None:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    click.echo(f"error: {server} did not answer: {first_line}", err=True)
    raise SystemExit(EXIT_UNREACHABLE)


_RELATIVE = re.compile(r"^(\d+)\s*([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class Moment(click.ParamType):
    """A point in time: `now`, an age back from now (`90m`, `48h`, `7d`), or an ISO 8601
    date or date-time (UTC unless it says otherwise)."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = str(value).strip().lower()
        now = datetime.now(UTC)
        if text == "now":
            return now
        relative = _RELATIVE.match(text)
        if relative:
            return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a time: use now, 90m, 48h, 7d, 2025-06-01 or "
                "2025-06-01T10:00:00+00:00",
                param,
                ctx,
            )
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


MOMENT = Moment()


def age(seconds: float | None) -> str:
    """A short human age: 42 s, 7 min, 3 h, 2 d."""
    if seconds is None:
        return "-"
    whole = int(max(seconds, 0))
    if whole < 120:
        return f"{whole} s"
    if whole < 2 * 3600:
        return f"{whole // 60} min"
    if whole < 2 * 86400:
        return f"{whole // 3600} h"
    return f"{whole // 86400} d"


def utc(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
