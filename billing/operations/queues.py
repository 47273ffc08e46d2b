"""How far behind each queue is: what waits in the broker, and what the outbox still owes.

The broker's depth says how much work is queued; the outbox says how old the oldest
unfinished job is (lag), which also covers jobs lost from the broker and not yet swept.
Both the `billing queues` command and the metrics read this.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import func, select

from billing.adapters.broker import inspect_queues
from billing.extensions import db
from billing.models import OutboxJob
from billing.platform.jobs import QUEUES
from billing.platform.outbox import UNFINISHED


@dataclass(frozen=True)
class QueueState:
    name: str
    depth: int  # messages waiting in the broker
    oldest_message_sent_at: datetime | None  # when the oldest waiting message was sent
    unfinished_jobs: int  # outbox jobs pending, sent or running on this queue
    oldest_unfinished_created_at: datetime | None


def queue_states() -> list[QueueState]:
    redis_url = current_app.config["BILLING_SETTINGS"].redis_url.get_secret_value()
    broker = {queue.name: queue for queue in inspect_queues(redis_url, QUEUES)}
    oldest_ids = [queue.oldest_job_id for queue in broker.values() if queue.oldest_job_id]
    sent_at = dict(
        db.session.execute(
            select(OutboxJob.id, func.coalesce(OutboxJob.sent_at, OutboxJob.created_at)).where(
                OutboxJob.id.in_(oldest_ids)
            )
        ).all()
    )
    unfinished = outbox_backlog()
    states = []
    for name in QUEUES:
        queue = broker[name]
        jobs, oldest = unfinished[name]
        states.append(
            QueueState(
                name=name,
                depth=queue.depth,
                oldest_message_sent_at=sent_at.get(queue.oldest_job_id or ""),
                unfinished_jobs=jobs,
                oldest_unfinished_created_at=oldest,
            )
        )
    return states


def outbox_backlog() -> dict[str, tuple[int, datetime | None]]:
    """Per queue, the outbox's unfinished jobs and when the oldest was created: readable
    without the broker (the metrics still show the lag while Redis is away)."""
    backlog: dict[str, tuple[int, datetime | None]] = {name: (0, None) for name in QUEUES}
    for row in db.session.execute(
        select(
            OutboxJob.queue,
            func.count().label("jobs"),
            func.min(OutboxJob.created_at).label("oldest"),
        )
        .where(OutboxJob.state.in_(UNFINISHED))
        .group_by(OutboxJob.queue)
    ):
        backlog[row.queue] = (row.jobs, row.oldest)
    return backlog


def database_now() -> datetime:
    """The database's clock, which every outbox timestamp uses: ages are measured on it."""
    now: datetime = db.session.execute(select(func.now())).scalar_one()
    return now
