"""Customer balance rules. Pure.

A customer's balance is credit the customer holds with us, in the customer's currency,
never below zero: credit notes put money into it, an admin adjusts it with a reason, and
each finalized invoice takes from it what it can before anything is charged. Every change
is one append-only transaction that carries the balance after it.
"""

from __future__ import annotations

import enum


class BalanceTransactionType(enum.StrEnum):
    # A credit note settled (partly) into the balance.
    CREDIT_NOTE = "credit_note"
    # That credit taken back when its credit note is voided.
    CREDIT_NOTE_VOIDED = "credit_note_voided"
    # An admin's manual adjustment, either way, with a reason.
    ADJUSTMENT = "adjustment"
    # Credit used to pay (part of) an invoice at its finalization.
    APPLIED_TO_INVOICE = "applied_to_invoice"
    # Credit given back when the invoice it had paid is voided.
    INVOICE_VOIDED = "invoice_voided"


def applicable(balance: int, amount_due: int) -> int:
    """How much of `balance` pays an invoice due `amount_due`: all it can, never more."""
    return max(0, min(balance, amount_due))
