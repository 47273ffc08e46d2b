"""Refunds: money given back through one Stripe Refund, in the phases of a charge.

A refund is recorded pending with its job; each run of the job claims it (started) and
asks Stripe, which makes it succeeded or failed; a lost answer leaves it unknown, and the
next run asks Stripe for it before sending anything again.
"""

from __future__ import annotations

import enum

from billing.domain.states import IllegalTransition, StateMachine


class RefundStatus(enum.StrEnum):
    PENDING = "pending"  # recorded, its job not yet run
    STARTED = "started"  # a run of its job is asking Stripe right now
    UNKNOWN = "unknown"  # Stripe's answer was lost: the next run reconciles first
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# Still on its way: counted as given back already, so that two quick requests cannot
# together refund more than was paid.
IN_PROGRESS = (RefundStatus.PENDING, RefundStatus.STARTED, RefundStatus.UNKNOWN)
FINAL = (RefundStatus.SUCCEEDED, RefundStatus.FAILED)

TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.PENDING: frozenset({RefundStatus.STARTED}),
    RefundStatus.STARTED: frozenset(
        {
            # Taken over by a later run once the earlier one's lease ran out.
            RefundStatus.STARTED,
            RefundStatus.UNKNOWN,
            RefundStatus.SUCCEEDED,
            RefundStatus.FAILED,
        }
    ),
    # Its job runs again: started, asking Stripe first whether the refund exists.
    RefundStatus.UNKNOWN: frozenset({RefundStatus.STARTED}),
    RefundStatus.SUCCEEDED: frozenset(),
    RefundStatus.FAILED: frozenset(),
}


class IllegalRefundTransition(IllegalTransition):
    subject = "a refund"


MACHINE = StateMachine(RefundStatus, TRANSITIONS, IllegalRefundTransition)


def require_transition(current: str, target: RefundStatus) -> RefundStatus:
    """`target`, if a refund in `current` may become it; IllegalRefundTransition if not."""
    return MACHINE.require(current, target)
