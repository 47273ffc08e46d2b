"""One transaction per use case; the jobs it recorded are published only after commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from billing.extensions import db

_DEPTH = "uow_depth"
RECORDED_JOBS = "outbox_recorded_jobs"
FINISHED_JOBS = "outbox_finished_jobs"


@contextmanager
def transaction() -> Iterator[Session]:
    """Commit on success, roll back on error. Nested uses join the outermost transaction,
    so that an API request can store its idempotent response atomically with the change."""
    session: Session = db.session()
    depth = session.info.get(_DEPTH, 0)
    session.info[_DEPTH] = depth + 1
    try:
        yield session
        if depth == 0:
            session.commit()
        else:
            # Joined to an outer transaction: flush, so that ids exist and constraints are
            # checked now, exactly as a commit of its own would have done.
            session.flush()
    except BaseException:
        if depth == 0:
            session.rollback()
            session.info.pop(RECORDED_JOBS, None)
            session.info.pop(FINISHED_JOBS, None)
        raise
    finally:
        session.info[_DEPTH] = depth
    if depth == 0:
        # Imported here: the outbox module uses this one for its own transactions.
        from billing.services.outbox import mark_finished_jobs, relay_recorded_jobs

        mark_finished_jobs(session)
        relay_recorded_jobs(session)
