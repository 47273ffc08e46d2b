"""Ledger entries: each side effect that must happen at most once, keyed by (scope, key).

A claim inserts its entry started, under a lease; its attempt ends it succeeded or failed
(both mean done: a later claim reuses the outcome) or unknown (the effect may or may not
have happened: the next claim reconciles first). A started entry whose lease ran out is
taken over. Dunning inserts its steps' entries succeeded at once.

For a charge, Stripe's later word (a webhook, the reconciliation) rewrites the entry's
outcome whatever it was, as it does the attempt's: a payment waiting for authentication
is recorded succeeded (Stripe answered) and becomes failed if the customer never
authenticates; a declined one becomes succeeded if the money arrives after all.
"""

from __future__ import annotations

import enum

from billing.domain.states import IllegalTransition, StateMachine


class LedgerState(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


# Done: a claim on the key gets the recorded outcome back instead of a go-ahead.
DONE = (LedgerState.SUCCEEDED, LedgerState.FAILED)

# What Stripe's word about a charge makes of its entry.
_STRIPE_SAYS = {LedgerState.SUCCEEDED, LedgerState.FAILED}

TRANSITIONS: dict[LedgerState, frozenset[LedgerState]] = {
    LedgerState.STARTED: frozenset(
        {
            LedgerState.STARTED,  # taken over once its holder's lease ran out
            LedgerState.SUCCEEDED,
            LedgerState.FAILED,
            LedgerState.UNKNOWN,
        }
    ),
    # Claimed again (reconcile first), or settled by Stripe's word.
    LedgerState.UNKNOWN: frozenset({LedgerState.STARTED, *_STRIPE_SAYS}),
    LedgerState.SUCCEEDED: frozenset(_STRIPE_SAYS),
    LedgerState.FAILED: frozenset(_STRIPE_SAYS),
}


class IllegalLedgerTransition(IllegalTransition):
    subject = "a ledger entry"


MACHINE = StateMachine(LedgerState, TRANSITIONS, IllegalLedgerTransition)


def require_transition(current: str, target: LedgerState) -> LedgerState:
    """`target`, if an entry in `current` may become it; IllegalLedgerTransition if not."""
    return MACHINE.require(current, target)
