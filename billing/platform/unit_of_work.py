"""One transaction per use case, and what is done once it commits (jobs published, runs
marked finished). Nothing here knows what those are: they register themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from billing.extensions import db

_DEPTH = "uow_depth"
_AFTER_COMMIT = "uow_after_commit"
_BEFORE_COMMIT = "uow_before_commit"

AfterCommit = Callable[[Session, list[Any]], None]


def after_commit(session: Session, callback: AfterCommit, *items: Any) -> None:
    """Have `callback(session, items)` called once the outermost transaction commits, with
    every item registered for it meanwhile; forgotten if it rolls back."""
    pending: dict[AfterCommit, list[Any]] = session.info.setdefault(_AFTER_COMMIT, {})
    pending.setdefault(callback, []).extend(items)


def before_commit(session: Session, callback: AfterCommit, *items: Any) -> None:
    """Have `callback(session, items)` called inside the transaction, just before it
    commits, with every item registered for it meanwhile: what must be written with the
    change but can only be written once the change is complete (the event log's
    snapshots). Whoever commits the session (transaction() or a plain commit) runs it."""
    pending: dict[AfterCommit, list[Any]] = session.info.setdefault(_BEFORE_COMMIT, {})
    pending.setdefault(callback, []).extend(items)


@event.listens_for(Session, "before_commit")
def _run_before_commit(session: Session) -> None:
    while pending := session.info.pop(_BEFORE_COMMIT, None):
        for callback, items in pending.items():
            callback(session, items)


@event.listens_for(Session, "after_transaction_end")
def _forget_before_commit(session: Session, transaction: SessionTransaction) -> None:
    # A commit ran them all already; what is left when the outermost transaction ends
    # belonged to one that rolled back.
    if transaction.parent is None:
        session.info.pop(_BEFORE_COMMIT, None)


def registered(session: Session, callback: AfterCommit) -> list[Any]:
    """The items registered for `callback` in the transaction under way."""
    return list(session.info.get(_AFTER_COMMIT, {}).get(callback, []))


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
            session.info.pop(_AFTER_COMMIT, None)
        raise
    finally:
        session.info[_DEPTH] = depth
    if depth == 0:
        for callback, items in session.info.pop(_AFTER_COMMIT, {}).items():
            callback(session, items)
