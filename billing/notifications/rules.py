"""Email deliveries: one email to one recipient about one event of an invoice.

A delivery is recorded pending with its job, and becomes sent once the mail server
accepted it, or failed when the server refused it for good. A deferral leaves it pending
for the job's retry; a failed delivery's job may be replayed by an operator.
"""

from __future__ import annotations

import enum

from billing.domain.states import IllegalTransition, StateMachine


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


TRANSITIONS: dict[DeliveryStatus, frozenset[DeliveryStatus]] = {
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED}),
    # Its job replayed: accepted this time, or refused again (with the new error).
    DeliveryStatus.FAILED: frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED}),
    DeliveryStatus.SENT: frozenset(),
}


class IllegalDeliveryTransition(IllegalTransition):
    subject = "an email delivery"


MACHINE = StateMachine(DeliveryStatus, TRANSITIONS, IllegalDeliveryTransition)


def require_transition(current: str, target: DeliveryStatus) -> DeliveryStatus:
    """`target`, if a delivery in `current` may become it; IllegalDeliveryTransition if not."""
    return MACHINE.require(current, target)


class SendOutcome(enum.StrEnum):
    """How one try at sending a delivery ended."""

    SENT = "sent"  # the server took the message
    REJECTED = "rejected"  # refused for good (5xx, a malformed header)
    NOT_SENT = "not_sent"  # nothing went out, for now: deferred (4xx, unreachable) or unbuilt


def may_be_sent(current: str) -> bool:
    """Whether a try at sending it may start: never once it went out."""
    return MACHINE.allows(current, DeliveryStatus.SENT)


def after_try(current: str, outcome: SendOutcome) -> DeliveryStatus:
    """The status a try with `outcome` leaves a delivery in: sent, failed, or as it was when
    nothing went out (not a change of status: the next try starts from it). Raises
    IllegalDeliveryTransition for a try that should not have started."""
    if outcome is SendOutcome.SENT:
        return require_transition(current, DeliveryStatus.SENT)
    if outcome is SendOutcome.REJECTED:
        return require_transition(current, DeliveryStatus.FAILED)
    if not may_be_sent(current):
        raise IllegalDeliveryTransition(current, current)
    return DeliveryStatus(current)
