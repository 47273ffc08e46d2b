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
