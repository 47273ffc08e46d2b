"""How a credit note's reason and settlement read to its customer, on its PDF and in its
email alike. Pure: the columns of a credit note in, plain words out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The settlement columns of a credit note, in the order a customer reads them, each with
# what it did for them.
SETTLEMENT_WORDS = (
    ("amount_due_reduction", "Deducted from the invoice's amount due"),
    ("refund_amount", "Refunded to the original payment method"),
    ("credit_balance_amount", "Credited to your account balance"),
    ("out_of_band_amount", "Settled separately"),
)

REASON_WORDS = {
    "duplicate": "Duplicate charge",
    "order_change": "Order change",
    "product_unsatisfactory": "Product unsatisfactory",
    "fraudulent": "Fraudulent charge",
    "other": "Other",
}


def settlement_in_words(credit_note: Mapping[str, Any] | Any) -> list[tuple[str, int]]:
    """Each part of the settlement that is not zero, as (what happened, amount): from a
    CreditNote or a row of credit_notes read as a mapping."""

    def part(column: str) -> int:
        if isinstance(credit_note, Mapping):
            return int(credit_note.get(column) or 0)
        return int(getattr(credit_note, column, 0) or 0)

    return [(words, part(column)) for column, words in SETTLEMENT_WORDS if part(column) > 0]


def reason_in_words(reason: str | None) -> str | None:
    if not reason:
        return None
    return REASON_WORDS.get(reason, reason.replace("_", " ").capitalize())
