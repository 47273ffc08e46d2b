"""What a card decline means, in words a customer's finance team understands.

Codes are Stripe's `decline_code` (or the error `code` when there is none). A hard decline
will not succeed on a retry with the same card: dunning waits for a new payment method."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeclineExplanation:
    reason: str
    what_to_do: str
    hard: bool


_UPDATE_CARD = "Please add a new card or another payment method in your billing settings."
_CONTACT_BANK = "Please contact your bank, or add another payment method in your billing settings."
_RETRY = "We will try again automatically; you do not need to do anything if the issue is resolved."

_EXPLANATIONS: dict[str, DeclineExplanation] = {
    "insufficient_funds": DeclineExplanation(
        "The card does not have enough funds available.", _RETRY, hard=False
    ),
    "card_declined": DeclineExplanation("The card was declined by the bank.", _CONTACT_BANK, False),
    "generic_decline": DeclineExplanation(
        "The card was declined by the bank without a reason.", _CONTACT_BANK, hard=False
    ),
    "do_not_honor": DeclineExplanation(
        "The bank declined the payment without a reason.", _CONTACT_BANK, hard=False
    ),
    "expired_card": DeclineExplanation("The card has expired.", _UPDATE_CARD, hard=True),
    "incorrect_cvc": DeclineExplanation(
        "The card's security code was not accepted.", _UPDATE_CARD, hard=True
    ),
    "incorrect_number": DeclineExplanation("The card number is not valid.", _UPDATE_CARD, True),
    "invalid_account": DeclineExplanation(
        "The card or its account is no longer valid.", _UPDATE_CARD, hard=True
    ),
    "lost_card": DeclineExplanation("The card was reported lost.", _UPDATE_CARD, hard=True),
    "stolen_card": DeclineExplanation("The card was reported stolen.", _UPDATE_CARD, hard=True),
    "pickup_card": DeclineExplanation(
        "The bank asked for this card to be withdrawn.", _UPDATE_CARD, hard=True
    ),
    "restricted_card": DeclineExplanation(
        "The card cannot be used for this kind of payment.", _UPDATE_CARD, hard=True
    ),
    "fraudulent": DeclineExplanation(
        "The payment was declined as possibly fraudulent.", _CONTACT_BANK, hard=True
    ),
    "card_velocity_exceeded": DeclineExplanation(
        "The card has reached its spending limit for now.", _RETRY, hard=False
    ),
    "processing_error": DeclineExplanation(
        "An error occurred while the payment was processed.", _RETRY, hard=False
    ),
    "authentication_required": DeclineExplanation(
        "The bank asks you to confirm this payment.",
        "Please confirm the payment from your billing settings.",
        hard=False,
    ),
    "authentication_not_completed": DeclineExplanation(
        "The payment was not confirmed with your bank in time.",
        "Please pay the invoice from your billing settings, or contact us.",
        hard=False,
    ),
    "requires_payment_method": DeclineExplanation(
        "The payment method was not accepted.", _UPDATE_CARD, hard=False
    ),
    "no_payment_method": DeclineExplanation(
        "There is no card or other payment method on file.", _UPDATE_CARD, hard=True
    ),
    # Stripe's PaymentIntent was not for the amount or currency asked: held (hard) so that
    # no retry charges again before an operator has looked.
    "amount_mismatch": DeclineExplanation(
        "We could not confirm this payment for the amount of the invoice.",
        "You do not need to do anything: our team is looking into it and will contact you.",
        hard=True,
    ),
}

_UNKNOWN = DeclineExplanation("The payment could not be completed.", _CONTACT_BANK, hard=False)


def explain_decline(code: str | None) -> DeclineExplanation:
    return _EXPLANATIONS.get(code or "", _UNKNOWN)


def is_hard_decline(code: str | None) -> bool:
    return explain_decline(code).hard
