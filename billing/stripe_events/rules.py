"""Stripe webhook events: stored as received, then applied once by their job.

Applying one ends it processed, ignored (not about anything of ours) or failed (its job
retries it). An operator may replay any stored event: it is received again, with a new
job to apply it.
"""

from __future__ import annotations

import enum

from billing.domain.states import IllegalTransition, StateMachine


class EventStatus(enum.StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


# Applied: a run of its job finds nothing left to do.
APPLIED = (EventStatus.PROCESSED, EventStatus.IGNORED)

_OUTCOMES = {EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.FAILED}

TRANSITIONS: dict[EventStatus, frozenset[EventStatus]] = {
    # RECEIVED again: replayed before its job ran, it gets one job more.
    EventStatus.RECEIVED: frozenset({EventStatus.RECEIVED, *_OUTCOMES}),
    # Its job retries it: any outcome again. Or an operator replays it.
    EventStatus.FAILED: frozenset({EventStatus.RECEIVED, *_OUTCOMES}),
    EventStatus.PROCESSED: frozenset({EventStatus.RECEIVED}),
    EventStatus.IGNORED: frozenset({EventStatus.RECEIVED}),
}


class IllegalEventTransition(IllegalTransition):
    subject = "a webhook event"


MACHINE = StateMachine(EventStatus, TRANSITIONS, IllegalEventTransition)


def require_transition(current: str, target: EventStatus) -> EventStatus:
    """`target`, if an event in `current` may become it; IllegalEventTransition if not."""
    return MACHINE.require(current, target)
