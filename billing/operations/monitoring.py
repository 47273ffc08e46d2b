"""Counts of what needs an operator, read when the metrics are scraped."""

from __future__ import annotations

from sqlalchemy import func, select

from billing.extensions import db
from billing.models import ChargeAttempt, OutboxJob
from billing.platform.outbox import REPLAYABLE


def unknown_charge_attempts() -> int:
    """Attempts whose answer from Stripe was lost and is not reconciled yet."""
    return (
        db.session.scalar(
            select(func.count()).select_from(ChargeAttempt).where(ChargeAttempt.status == "unknown")
        )
        or 0
    )


def dead_letters() -> dict[tuple[str, str], int]:
    """Jobs an operator must look at (`billing dead-letters list`), by queue and state."""
    rows = db.session.execute(
        select(OutboxJob.queue, OutboxJob.state, func.count())
        .where(OutboxJob.state.in_(REPLAYABLE))
        .group_by(OutboxJob.queue, OutboxJob.state)
    )
    return {(queue, state): count for queue, state, count in rows}
