"""The ledger: every side effect that must happen at most once, keyed by (scope, key).

A claim is committed on its own before the side effect starts, so that a concurrent
or later attempt sees it; its lease lets a crashed holder's entry be taken over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from billing.extensions import db
from billing.models import LedgerEntry


class Claim(enum.StrEnum):
    NEW = "new"  # nobody tried before: go ahead
    RESUMED = "resumed"  # an earlier attempt died or ended unknown: reconcile, then go ahead
    IN_PROGRESS = "in_progress"  # another attempt holds the lease right now
    DONE = "done"  # finished before (succeeded or failed): reuse its outcome
    MISMATCH = "mismatch"  # the key was used for a different request


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    entry_id: int
    state: str
    response_status: int | None = None
    response_body: Any = None
    outcome: dict[str, Any] | None = None


def claim(
    scope: str,
    key: str,
    fingerprint: str,
    *,
    lease: timedelta,
    keep_for: timedelta | None = None,
) -> ClaimResult:
    """Take (scope, key) for one attempt, in a transaction of its own."""
    session = db.session()
    expires_at = func.now() + keep_for if keep_for is not None else None
    inserted = session.execute(
        insert(LedgerEntry)
        .values(
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            state="started",
            locked_until=func.now() + lease,
            expires_at=expires_at,
        )
        .on_conflict_do_nothing(constraint="uq_ledger_entries_scope_key")
        .returning(LedgerEntry.id)
    ).scalar_one_or_none()
    if inserted is not None:
        session.commit()
        return ClaimResult(Claim.NEW, inserted, "started")

    entry = session.execute(
        select(LedgerEntry)
        .where(LedgerEntry.scope == scope, LedgerEntry.key == key)
        .with_for_update()
    ).scalar_one()
    lease_expired = session.execute(
        select(func.coalesce(entry.locked_until, func.now()) <= func.now())
    ).scalar_one()
    result: ClaimResult
    if entry.fingerprint != fingerprint:
        result = ClaimResult(Claim.MISMATCH, entry.id, entry.state)
    elif entry.state in ("succeeded", "failed"):
        result = ClaimResult(
            Claim.DONE,
            entry.id,
            entry.state,
            entry.response_status,
            entry.response_body,
            entry.outcome,
        )
    elif entry.state == "started" and not lease_expired:
        result = ClaimResult(Claim.IN_PROGRESS, entry.id, entry.state)
    else:
        entry.state = "started"
        entry.locked_until = func.now() + lease
        result = ClaimResult(Claim.RESUMED, entry.id, "started", outcome=entry.outcome)
    session.commit()
    return result


def complete(
    entry_id: int,
    state: str,
    *,
    response_status: int | None = None,
    response_body: Any = None,
    outcome: dict[str, Any] | None = None,
) -> None:
    """Record the outcome in the caller's transaction (atomic with the change it made)."""
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == entry_id)
        .values(
            state=state,
            response_status=response_status,
            response_body=response_body,
            outcome=outcome,
            locked_until=None,
        )
    )


def mark_unknown(entry_id: int, outcome: dict[str, Any] | None = None) -> None:
    """The side effect may or may not have happened: the next attempt must reconcile first."""
    session = db.session()
    session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == entry_id)
        .values(state="unknown", outcome=outcome, locked_until=None)
    )
    session.commit()


def release(entry_id: int) -> None:
    """Forget a claim whose attempt changed nothing, so the same key may be used afresh."""
    session = db.session()
    session.execute(delete(LedgerEntry).where(LedgerEntry.id == entry_id))
    session.commit()


def purge_expired(batch: int = 5000) -> int:
    """Delete entries past their retention (idempotency keys); others are kept for good."""
    session = db.session()
    total = 0
    while True:
        ids = select(LedgerEntry.id).where(LedgerEntry.expires_at < func.now()).limit(batch)
        result = session.execute(delete(LedgerEntry).where(LedgerEntry.id.in_(ids)))
        deleted = int(getattr(result, "rowcount", 0) or 0)
        session.commit()
        total += deleted or 0
        if not deleted or deleted < batch:
            return total
