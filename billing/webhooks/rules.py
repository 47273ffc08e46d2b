"""Deliveries of events to webhook endpoints: their states, their retries, their order. Pure.

A delivery is one event for one endpoint. It is *waiting* while an earlier event about the
same object has not yet reached that endpoint, *pending* while its endpoint's drain sends
it (again, once `next_attempt_at` comes), and ends *succeeded* (a 2xx), *failed* (retried
for the whole retry window, or the endpoint answered 410) or *canceled* (the endpoint was
deleted first). An operator's replay makes an ended delivery waiting again, released in
sequence order.
"""

from __future__ import annotations

import enum
import random
from datetime import datetime, timedelta

from billing.domain.states import IllegalTransition, StateMachine

# A drain job hands over to a fresh one after this long, and starts no POST after it, so
# that no job outlives its limits (a POST started in time still runs to its own timeout).
DRAIN_BUDGET_SECONDS = 30.0


class DeliveryState(enum.StrEnum):
    WAITING = "waiting"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


UNFINISHED = (DeliveryState.WAITING, DeliveryState.PENDING)
ENDED = (DeliveryState.SUCCEEDED, DeliveryState.FAILED, DeliveryState.CANCELED)

TRANSITIONS: dict[DeliveryState, frozenset[DeliveryState]] = {
    # Released when the earlier delivery ends, or when it waited ORDER_WAIT.
    DeliveryState.WAITING: frozenset({DeliveryState.PENDING, DeliveryState.CANCELED}),
    DeliveryState.PENDING: frozenset(
        {
            DeliveryState.PENDING,  # a failed try: sent again once its backoff is over
            DeliveryState.SUCCEEDED,
            DeliveryState.FAILED,
            DeliveryState.CANCELED,
        }
    ),
    # Replayed by an operator: sent again, signed anew, behind the object's earlier events.
    DeliveryState.SUCCEEDED: frozenset({DeliveryState.WAITING}),
    DeliveryState.FAILED: frozenset({DeliveryState.WAITING}),
    DeliveryState.CANCELED: frozenset({DeliveryState.WAITING}),
}


class IllegalDeliveryTransition(IllegalTransition):
    subject = "a webhook delivery"


MACHINE = StateMachine(DeliveryState, TRANSITIONS, IllegalDeliveryTransition)


def require_transition(current: str, target: DeliveryState) -> DeliveryState:
    return MACHINE.require(current, target)


class TryOutcome(enum.StrEnum):
    """How one POST ended, as counted on billing_webhook_deliveries_total."""

    DELIVERED = "delivered"  # a 2xx
    GONE = "gone"  # 410: the receiver asks us to stop; the endpoint is disabled
    FAILED = "failed"  # any other answer, or none: retried
    REFUSED = "refused"  # the URL now resolves to an address we do not send to: retried


def outcome_of(status: int | None, *, refused: bool = False) -> TryOutcome:
    if refused:
        return TryOutcome.REFUSED
    if status is not None and 200 <= status < 300:
        return TryOutcome.DELIVERED
    if status == 410:
        return TryOutcome.GONE
    return TryOutcome.FAILED


def retry_delay(
    tries: int, *, base: timedelta, cap: timedelta, rng: random.Random | None = None
) -> timedelta:
    """The wait before try `tries + 1`: doubling from `base`, capped, with jitter over its
    upper half, so that the deliveries of one outage do not all come back at once while
    none comes back much earlier than its doubling says."""
    ceiling = min(cap, base * (2 ** max(0, tries - 1)))
    share = 0.5 + 0.5 * (rng or random).random()
    return ceiling * share


def gives_up(first_try: datetime, now: datetime, retry_for: timedelta) -> bool:
    """Retried for the whole window: the delivery ends failed."""
    return now - first_try >= retry_for


def endpoint_disabled_by_failures(
    failing_since: datetime | None, now: datetime, disable_after: timedelta
) -> bool:
    """An endpoint that answered no delivery for this long is disabled (and its owner told)."""
    return failing_since is not None and now - failing_since >= disable_after
