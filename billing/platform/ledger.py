"""The ledger: every side effect that must happen at most once, keyed by (scope, key).

A claim is committed on its own before the side effect starts, so that a concurrent
or later attempt sees it; its lease lets a crashed holder's entry be taken over. Each
claim carries a fencing token (the entry's attempt number): an attempt that outlived
its lease and was taken over can no longer record anything, because every write below
names the attempt it belongs to.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import CTE, Interval, bindparam, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert

from billing.domain import ledger as ledger_rules
from billing.domain.ledger import LedgerState
from billing.extensions import db
from billing.models import LedgerEntry
from billing.platform.errors import HeldElsewhere
from billing.platform.prebuilt import Prebuilt


class Claim(enum.StrEnum):
    NEW = "new"  # nobody tried before: go ahead
    RESUMED = "resumed"  # an earlier attempt died or ended unknown: reconcile, then go ahead
    IN_PROGRESS = "in_progress"  # another attempt holds the lease right now
    DONE = "done"  # finished before (succeeded or failed): reuse its outcome
    MISMATCH = "mismatch"  # the key was used for a different request


class LeaseLost(Exception):
    """Another attempt took this entry over: this one must not record an outcome."""


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    entry_id: int
    attempt: int
    state: str
    response_status: int | None = None
    response_body: Any = None
    outcome: dict[str, Any] | None = None
    # IN_PROGRESS only: seconds until the holder's lease ends.
    lease_left: float | None = None


_entries = LedgerEntry.__table__
# A waiting job comes back this long after the holder's lease ends: enough for the holder's
# own last commit, or for the lease to have lapsed by the database's clock too.
HELD_RETRY_MARGIN_SECONDS = 1.0
# Built once: every charge, email and idempotent request claims through it. Without a
# retention (keep_for NULL) now() + NULL leaves expires_at NULL: kept for good.
_CLAIM_NEW = Prebuilt(
    insert(_entries)
    .values(
        scope=bindparam("b_scope"),
        key=bindparam("b_key"),
        fingerprint=bindparam("b_fingerprint"),
        state=LedgerState.STARTED,
        attempt=1,
        locked_until=func.now() + bindparam("b_lease", type_=Interval()),
        expires_at=func.now() + bindparam("b_keep_for", type_=Interval()),
    )
    .on_conflict_do_nothing(constraint="uq_ledger_entries_scope_key")
    .returning(_entries.c.id)
)


# A claim whose holder died (its lease ran out) or whose outcome was left unknown: the next
# attempt takes it over, as `claim` does (RESUMED).
_TAKEN_OVER = (_entries.c.state == LedgerState.UNKNOWN) | (
    (_entries.c.state == LedgerState.STARTED)
    & (func.coalesce(_entries.c.locked_until, func.now()) <= func.now())
)


def claim_or_resume(scope: str, key: Any, fingerprint: Any, *where: Any) -> CTE:
    """`claim` as a CTE of the caller's statement, taking its key and fingerprint from
    another part of it: a NEW claim on a key nobody claimed, or a RESUMED one taking over
    an entry as `claim` would; either returns the entry's id and attempt. An entry held
    or done returns nothing: `claim_found` tells which, from `earlier_claim` read in the
    same statement. Leased for b_claim_lease, named apart from a job's b_lease."""
    inserting = insert(_entries).from_select(
        ["scope", "key", "fingerprint", "state", "attempt", "locked_until"],
        select(
            literal(scope),
            key,
            fingerprint,
            literal(LedgerState.STARTED.value),
            literal(1),
            func.now() + bindparam("b_claim_lease", type_=Interval()),
        ).where(*where),
    )
    return (
        inserting.on_conflict_do_update(
            constraint="uq_ledger_entries_scope_key",
            set_={
                "state": LedgerState.STARTED,
                "attempt": _entries.c.attempt + 1,
                "locked_until": inserting.excluded.locked_until,
            },
            where=(_entries.c.fingerprint == inserting.excluded.fingerprint) & _TAKEN_OVER,
        )
        .returning(_entries.c.id, _entries.c.attempt)
        .cte("ledger_claim")
    )


def earlier_claim(scope: str, key: Any) -> Any:
    """SQL: the entry on (scope, key) as the caller's statement found it, before its own
    claim (every part of a statement reads the same snapshot), as JSON; NULL if none."""
    return (
        select(
            func.json_build_object(
                "id",
                _entries.c.id,
                "attempt",
                _entries.c.attempt,
                "state",
                _entries.c.state,
                "fingerprint",
                _entries.c.fingerprint,
                "lease_left",
                func.extract(
                    "epoch", func.coalesce(_entries.c.locked_until, func.now()) - func.now()
                ),
            )
        )
        .where(_entries.c.scope == scope, _entries.c.key == key)
        .scalar_subquery()
    )


def claim_found(
    fingerprint: str,
    claimed_id: int | None,
    claimed_attempt: int | None,
    earlier: dict[str, Any] | None,
) -> ClaimResult:
    """What a statement with `claim_or_resume` and `earlier_claim` found: the claim it made
    (NEW or RESUMED), or why it made none (DONE, IN_PROGRESS, MISMATCH)."""
    if claimed_id is not None and claimed_attempt is not None:
        # Attempt 1 is a key nobody held (or one released since): nothing to reconcile.
        claimed = Claim.NEW if claimed_attempt == 1 else Claim.RESUMED
        return ClaimResult(claimed, claimed_id, claimed_attempt, LedgerState.STARTED)
    if earlier is not None:
        lease_left = float(earlier["lease_left"])
        found = existing_entry_claim(
            earlier["state"], earlier["fingerprint"] == fingerprint, lease_left
        )
        if found is not Claim.RESUMED:
            return ClaimResult(
                found,
                int(earlier["id"]),
                int(earlier["attempt"]),
                earlier["state"],
                lease_left=lease_left if found is Claim.IN_PROGRESS else None,
            )
    # Claimed by another attempt while the statement ran, too late for its snapshot: that
    # attempt holds it now, and the caller comes back in a moment to see how it ended.
    return ClaimResult(Claim.IN_PROGRESS, 0, 0, LedgerState.STARTED, lease_left=0.0)


def claim(
    scope: str,
    key: str,
    fingerprint: str,
    *,
    lease: timedelta,
    keep_for: timedelta | None = None,
    commit: bool = True,
) -> ClaimResult:
    """Take (scope, key) for one attempt: in a transaction of its own by default, or in
    the caller's (commit=False), when the claim must commit with other changes."""
    session = db.session()
    # Two tries: the row we collide with may be deleted (released, purged) before we read it.
    for _ in range(2):
        inserted = _CLAIM_NEW.execute(
            session.connection(),
            {
                "b_scope": scope,
                "b_key": key,
                "b_fingerprint": fingerprint,
                "b_lease": lease,
                "b_keep_for": keep_for,
            },
        ).scalar_one_or_none()
        if inserted is not None:
            if commit:
                session.commit()
            return ClaimResult(Claim.NEW, inserted, 1, LedgerState.STARTED)
        entry = session.execute(
            select(LedgerEntry)
            .where(LedgerEntry.scope == scope, LedgerEntry.key == key)
            .with_for_update()
        ).scalar_one_or_none()
        if entry is not None:
            result = _claim_existing(entry, fingerprint, lease)
            if commit:
                session.commit()
            return result
        if commit:
            session.rollback()
    raise LeaseLost(f"ledger entry {scope}/{key} kept vanishing while being claimed")


def claim_in_transaction(scope: str, key: str, owner_id: str, *, lease: timedelta) -> ClaimResult:
    """A job's claim on one outside side effect, in the caller's transaction: NEW, RESUMED
    or DONE; another live holder is a reason to retry later, a foreign key a bug."""
    claimed = claim(scope, key, owner_id, lease=lease, commit=False)
    return usable(claimed, scope, key, owner_id, lease)


def usable(
    claimed: ClaimResult, scope: str, key: str, owner_id: str, lease: timedelta
) -> ClaimResult:
    """`claimed` when the job may go on with it (NEW, RESUMED or DONE); raises otherwise."""
    if claimed.claim is Claim.IN_PROGRESS:
        # Its holder finishes, or its lease ends, within what is left of its lease: come
        # back just after that, rather than after a backoff that grows with every try (nor
        # a whole lease: a holder killed seconds ago would leave us waiting twice as long).
        left = claimed.lease_left if claimed.lease_left is not None else lease.total_seconds()
        raise HeldElsewhere(
            f"{scope} {key} is held by another worker",
            retry_after=min(lease.total_seconds(), max(left, 0.0) + HELD_RETRY_MARGIN_SECONDS),
        )
    if claimed.claim is Claim.MISMATCH:
        raise RuntimeError(f"ledger key {scope} {key} belongs to something other than {owner_id}")
    return claimed


def existing_entry_claim(state: str, same_fingerprint: bool, lease_left: float) -> Claim:
    """What an entry that exists already means for a new attempt on its key."""
    if not same_fingerprint:
        return Claim.MISMATCH
    if state in ledger_rules.DONE:
        return Claim.DONE
    if state == LedgerState.STARTED and lease_left > 0:
        return Claim.IN_PROGRESS
    return Claim.RESUMED  # its holder died (the lease ran out) or its outcome is unknown


def _claim_existing(entry: LedgerEntry, fingerprint: str, lease: timedelta) -> ClaimResult:
    lease_left = float(
        db.session.execute(
            select(
                func.extract("epoch", func.coalesce(entry.locked_until, func.now()) - func.now())
            )
        ).scalar_one()
    )
    found = existing_entry_claim(entry.state, entry.fingerprint == fingerprint, lease_left)
    if found is Claim.MISMATCH:
        return ClaimResult(Claim.MISMATCH, entry.id, entry.attempt, entry.state)
    if found is Claim.DONE:
        return ClaimResult(
            Claim.DONE,
            entry.id,
            entry.attempt,
            entry.state,
            entry.response_status,
            entry.response_body,
            entry.outcome,
        )
    if found is Claim.IN_PROGRESS:
        return ClaimResult(
            Claim.IN_PROGRESS, entry.id, entry.attempt, entry.state, lease_left=lease_left
        )
    entry.state = LedgerState.STARTED
    entry.attempt += 1
    entry.locked_until = func.now() + lease
    return ClaimResult(
        Claim.RESUMED, entry.id, entry.attempt, LedgerState.STARTED, outcome=entry.outcome
    )


_OWN_ATTEMPT = (
    (_entries.c.id == bindparam("b_entry_id"))
    & (_entries.c.attempt == bindparam("b_attempt"))
    & (_entries.c.state == LedgerState.STARTED)
)
# Built once: every charge and email records its outcome through it, and building the
# statement per call cost more CPU than its round trip. Core, not ORM: nothing loaded in
# the session reads the entry afterwards, only its row changes.
_COMPLETE = Prebuilt(
    update(_entries)
    .where(_OWN_ATTEMPT)
    .values(
        state=bindparam("b_state"),
        response_status=bindparam("b_response_status", type_=_entries.c.response_status.type),
        response_body=bindparam("b_response_body", type_=_entries.c.response_body.type),
        outcome=bindparam("b_outcome", type_=_entries.c.outcome.type),
        locked_until=None,
    )
)


def completion(state: str, *guards: Any) -> CTE:
    """`complete`'s update as a CTE, for a caller that records the outcome together with
    its own changes in one statement; it returns the entry's id only if this attempt still
    held the entry (and `guards` hold), so the caller's other changes can be guarded on it."""
    return (
        update(_entries)
        .where(_OWN_ATTEMPT, *guards)
        .values(
            state=state,
            outcome=bindparam("b_outcome", type_=_entries.c.outcome.type),
            locked_until=None,
        )
        .returning(_entries.c.id)
        .cte(f"ledger_{state}")
    )


def release_cte() -> CTE:
    """`release` as a CTE, for a caller that records what its attempt left behind in the
    same statement; it returns the entry's id only if this attempt still held it."""
    return delete(_entries).where(_OWN_ATTEMPT).returning(_entries.c.id).cte("ledger_released")


def _update_own_attempt(claimed: ClaimResult, **values: Any) -> None:
    result = db.session.execute(
        update(_entries).where(_OWN_ATTEMPT).values(**values),
        {"b_entry_id": claimed.entry_id, "b_attempt": claimed.attempt},
    )
    _check_own_attempt(claimed, result)


def _check_own_attempt(claimed: ClaimResult, result: Any) -> None:
    if not getattr(result, "rowcount", 0):
        raise LeaseLost(f"ledger entry {claimed.entry_id} was taken over by a later attempt")


def complete(
    claimed: ClaimResult,
    state: str,
    *,
    response_status: int | None = None,
    response_body: Any = None,
    outcome: dict[str, Any] | None = None,
) -> None:
    """Record the outcome in the caller's transaction (atomic with the change it made).
    Raises LeaseLost, so the caller's transaction rolls back, if it was taken over."""
    result = _COMPLETE.execute(
        db.session.connection(),
        {
            "b_entry_id": claimed.entry_id,
            "b_attempt": claimed.attempt,
            "b_state": state,
            "b_response_status": response_status,
            "b_response_body": response_body,
            "b_outcome": outcome,
        },
    )
    _check_own_attempt(claimed, result)


def overrule(scope: str, key: str, state: str, outcome: dict[str, Any]) -> None:
    """Record an outcome learnt from outside the claim (Stripe's webhook) in the caller's
    transaction, whoever holds the entry. Its attempt counter is raised, so a process that
    still holds the claim can no longer record its own, older, view: it finds this outcome
    when it runs again."""
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.scope == scope, LedgerEntry.key == key)
        .values(state=state, attempt=LedgerEntry.attempt + 1, locked_until=None, outcome=outcome)
    )


def mark_unknown(
    claimed: ClaimResult, outcome: dict[str, Any] | None = None, *, commit: bool = True
) -> bool:
    """The side effect may or may not have happened: the next attempt must reconcile first.
    False when a later attempt took over (it reconciles anyway)."""
    try:
        _update_own_attempt(claimed, state=LedgerState.UNKNOWN, outcome=outcome, locked_until=None)
    except LeaseLost:
        if commit:
            db.session.rollback()
        return False
    if commit:
        db.session.commit()
    return True


def release(claimed: ClaimResult, *, commit: bool = True) -> None:
    """Forget a claim whose attempt changed nothing, so the same key may be used afresh.
    Only a still-running claim of this very attempt is deleted, never a recorded outcome.
    In a transaction of its own by default, or in the caller's (commit=False)."""
    session = db.session()
    session.execute(
        delete(LedgerEntry).where(
            LedgerEntry.id == claimed.entry_id,
            LedgerEntry.attempt == claimed.attempt,
            LedgerEntry.state == LedgerState.STARTED,
        )
    )
    if commit:
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
        total += deleted
        if deleted < batch:
            return total
