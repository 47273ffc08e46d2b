"""Charge attempts: one try at taking an invoice's amount due through one PaymentIntent.

An attempt is recorded pending with its job; the job claims it (started) and asks Stripe.
Stripe's answer makes it succeeded, failed or requires_action (3-D Secure); a lost answer
leaves it unknown, to be reconciled and never sent blindly again. An attempt never sent
is canceled when its invoice was paid or voided first.

Stripe has the last word on money: what it says of an attempt in flight (a webhook, the
reconciliation, the follow-up of an authentication) is adopted whatever we recorded last,
and a failed or canceled attempt whose payment went through after all becomes succeeded.
Nothing leaves succeeded.
"""

from __future__ import annotations

import enum

from billing.domain.states import IllegalTransition, StateMachine


class ChargeStatus(enum.StrEnum):
    PENDING = "pending"  # recorded, its job not yet run
    STARTED = "started"  # the PaymentIntent is being created right now
    UNKNOWN = "unknown"  # Stripe's answer was lost: to be reconciled, never retried blindly
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"  # the invoice was paid or voided before this attempt ran


# An attempt in one of these may still move money: at most one per invoice at a time.
IN_FLIGHT = (
    ChargeStatus.PENDING,
    ChargeStatus.STARTED,
    ChargeStatus.UNKNOWN,
    ChargeStatus.REQUIRES_ACTION,
)
# Nothing more is sent for these; only Stripe's later word may still change them.
FINAL = (ChargeStatus.SUCCEEDED, ChargeStatus.FAILED, ChargeStatus.CANCELED)
# Stripe's answer is known: final, or waiting on the customer rather than on us.
ANSWERED = (*FINAL, ChargeStatus.REQUIRES_ACTION)

# What Stripe may say of an attempt: the outcomes of a PaymentIntent.
_STRIPE_SAYS = {ChargeStatus.SUCCEEDED, ChargeStatus.FAILED, ChargeStatus.REQUIRES_ACTION}

TRANSITIONS: dict[ChargeStatus, frozenset[ChargeStatus]] = {
    ChargeStatus.PENDING: frozenset(
        {
            ChargeStatus.STARTED,  # its job claimed it and is about to send it
            ChargeStatus.CANCELED,  # the invoice was paid or voided before it was sent
            ChargeStatus.FAILED,  # not sent: the customer has no payment method
            *_STRIPE_SAYS,  # Stripe's word, whatever we recorded last
        }
    ),
    ChargeStatus.STARTED: frozenset(
        {
            ChargeStatus.UNKNOWN,  # Stripe's answer was lost, or the intent is still processing
            ChargeStatus.CANCELED,  # taken over, never reached Stripe, and the invoice is settled
            *_STRIPE_SAYS,
        }
    ),
    ChargeStatus.UNKNOWN: frozenset(
        {
            ChargeStatus.UNKNOWN,  # a retry lost its answer too: recorded again, new error
            ChargeStatus.CANCELED,  # Stripe has no intent for it, and the invoice is settled
            *_STRIPE_SAYS,
        }
    ),
    ChargeStatus.REQUIRES_ACTION: frozenset({ChargeStatus.SUCCEEDED, ChargeStatus.FAILED}),
    ChargeStatus.SUCCEEDED: frozenset(),
    # Money may arrive after a decline (the customer confirms the intent later). FAILED
    # again: an attempt already failed whose intent turns out to be for another amount
    # is recorded failed once more, with that reason.
    ChargeStatus.FAILED: frozenset({ChargeStatus.SUCCEEDED, ChargeStatus.FAILED}),
    ChargeStatus.CANCELED: frozenset({ChargeStatus.SUCCEEDED, ChargeStatus.FAILED}),
}


class IllegalChargeTransition(IllegalTransition):
    subject = "a charge attempt"


MACHINE = StateMachine(ChargeStatus, TRANSITIONS, IllegalChargeTransition)


def require_transition(current: str, target: ChargeStatus) -> ChargeStatus:
    """`target`, if an attempt in `current` may become it; IllegalChargeTransition if not."""
    return MACHINE.require(current, target)
