"""Every kind of customer email, declared once: what it shows, what it attaches, when an
operator may send it again. Its templates are the folder named after it under templates/.

Adding a kind is one declaration here and one template folder; the mail service, the
operators' resend and the delivery table's list of kinds all read this module. Pure: the
views take what the mail service read and formatted, and return the fields they add."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from billing.charging.declines import explain_decline
from billing.credit_notes.rules import CreditNoteStatus
from billing.domain.credit_note_words import reason_in_words, settlement_in_words
from billing.invoicing.rules import InvoiceStatus


@dataclass(frozen=True)
class Facts:
    """What a kind's view may draw on, besides the invoice's fields every email shows."""

    # The row the delivery's occasion names (in the kind's `occasion` table), if it exists.
    occasion: Mapping[str, Any] | None
    # What the caller recorded with the delivery (queue_email's context_).
    context: Mapping[str, Any]
    due_date: date | None
    portal_url: str | None
    # The invoice's hosted page (None for a subscription's email, or with the pages off).
    invoice_url: str | None
    # Formatting in the invoice's currency and the customer's locale.
    money: Callable[[int], str]
    date: Callable[[date | datetime | None], str]


View = Callable[[Facts], dict[str, Any]]


def _nothing_more(facts: Facts) -> dict[str, Any]:
    return {}


class Attachment(enum.StrEnum):
    """Which PDF an email carries; it waits until that PDF is stored."""

    # The invoice's newest document.
    INVOICE_PDF = "invoice_pdf"
    # The newest document of the credit note the delivery's occasion names.
    CREDIT_NOTE_PDF = "credit_note_pdf"


@dataclass(frozen=True)
class EmailKind:
    name: str
    # The invoice statuses in which an operator may send it again (see resend_refusal).
    resendable_in: frozenset[InvoiceStatus]
    # The fields its templates show beyond the invoice's own.
    view: View = _nothing_more
    # The table whose row (by id) the delivery's occasion names, for a view that reads it.
    occasion: str | None = None
    # Why a resend is refused although the invoice's status allows it, given the occasion's
    # row as it is now (None: allowed).
    refuse_resend: Callable[[Mapping[str, Any] | None], str | None] | None = None
    # The PDF that goes with it, if any; it waits until there is one.
    attaches: Attachment | None = None

    @property
    def template(self) -> str:
        """The folder of its subject.txt, body.txt and body.html under templates/."""
        return self.name


def _action_url(attempt: Mapping[str, Any] | None, facts: Facts) -> str | None:
    """Where the customer acts: the invoice's hosted page (which completes 3-D Secure and
    replaces a card), else Stripe's own redirect, else the company's portal."""
    if facts.invoice_url:
        return facts.invoice_url
    next_action = (attempt or {}).get("next_action") or {}
    redirect = next_action.get("redirect_to_url") or {}
    url = redirect.get("url") if isinstance(redirect, dict) else None
    return str(url) if url else facts.portal_url


def _payment_trouble(facts: Facts) -> dict[str, Any]:
    """A charge attempt that failed or waits for the customer: why, and what to do."""
    attempt = facts.occasion
    explanation = explain_decline(attempt.get("decline_code") if attempt is not None else None)
    retry = facts.context.get("next_retry_date")
    view = {
        "reason": explanation.reason,
        "what_to_do": explanation.what_to_do,
        "action_url": _action_url(attempt, facts),
        "next_retry_date": facts.date(date.fromisoformat(retry)) if retry else "",
    }
    if attempt is not None:
        view["amount_due"] = facts.money(attempt["amount"])  # what this attempt asked for
    return view


def _still_awaiting_confirmation(attempt: Mapping[str, Any] | None) -> str | None:
    status = attempt["status"] if attempt is not None else "gone"
    if status != "requires_action":
        return f"the payment it asks the customer to confirm is now {status}"
    return None


def _refund(facts: Facts) -> dict[str, Any]:
    refund = facts.occasion
    return {"refund_amount": facts.money(refund["amount"] if refund is not None else 0)}


def _credit_note(facts: Facts) -> dict[str, Any]:
    """The credit note the occasion names: its number, total and how it was settled."""
    note = facts.occasion or {}
    return {
        "credit_note_number": note.get("number") or "",
        "credit_note_total": facts.money(int(note.get("total") or 0)),
        "credit_note_date": facts.date(note.get("issued_at")),
        "credit_note_reason": reason_in_words(note.get("reason")) or "",
        "settlement": [
            {"words": words, "amount": facts.money(amount)}
            for words, amount in settlement_in_words(note)
        ],
    }


def _credit_note_stands(credit_note: Mapping[str, Any] | None) -> str | None:
    if credit_note is None:
        return "the credit note is gone"
    if credit_note["status"] != CreditNoteStatus.ISSUED:
        return f"the credit note is {credit_note['status']}"
    return None


def _overdue(facts: Facts) -> dict[str, Any]:
    as_of_text = facts.context.get("as_of")
    as_of = date.fromisoformat(as_of_text) if as_of_text else date.today()
    return {"days_overdue": (as_of - (facts.due_date or as_of)).days}


_OPEN = InvoiceStatus.OPEN
_PAID = InvoiceStatus.PAID
_UNCOLLECTIBLE = InvoiceStatus.UNCOLLECTIBLE

# In the order of the delivery table's CHECK constraint (migrations 0005 and 0013), which
# lists them.
KINDS: dict[str, EmailKind] = {
    kind.name: kind
    for kind in (
        EmailKind(
            "invoice_issued",
            resendable_in=frozenset({_OPEN, _PAID, _UNCOLLECTIBLE}),
            attaches=Attachment.INVOICE_PDF,
        ),
        EmailKind("payment_receipt", resendable_in=frozenset({_PAID})),
        EmailKind(
            "payment_failed",
            resendable_in=frozenset({_OPEN, _UNCOLLECTIBLE}),
            view=_payment_trouble,
            occasion="charge_attempts",
        ),
        EmailKind(
            "authentication_required",
            resendable_in=frozenset({_OPEN, _UNCOLLECTIBLE}),
            view=_payment_trouble,
            occasion="charge_attempts",
            refuse_resend=_still_awaiting_confirmation,
        ),
        EmailKind(
            "refund_issued",
            resendable_in=frozenset({_PAID}),
            view=_refund,
            occasion="refunds",
        ),
        EmailKind("payment_reminder", resendable_in=frozenset({_OPEN}), view=_overdue),
        EmailKind("final_notice", resendable_in=frozenset({_UNCOLLECTIBLE})),
        EmailKind(
            "credit_note_issued",
            resendable_in=frozenset({_OPEN, _PAID, _UNCOLLECTIBLE}),
            view=_credit_note,
            occasion="credit_notes",
            refuse_resend=_credit_note_stands,
            attaches=Attachment.CREDIT_NOTE_PDF,
        ),
        # About a subscription alone, with no invoice: nothing an invoice's status could
        # allow resending, and the trial's end passes by soon anyway.
        EmailKind("trial_will_end", resendable_in=frozenset()),
    )
}


def resend_refusal(kind: EmailKind, invoice_status: str) -> str | None:
    """Why `kind` may not be sent again for an invoice in `invoice_status` (None: it may)."""
    if invoice_status in kind.resendable_in:
        return None
    allowed = ", ".join(status for status in InvoiceStatus if status in kind.resendable_in)
    return f"a {kind.name} email is not sent for a {invoice_status} invoice (only {allowed})"
