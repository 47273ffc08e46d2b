"""The customer's own page of an invoice, reached by a signed link: opening the link, and
what the page shows (the same invoice view the PDF is made from, the payments so far,
the dunning plan and the documents)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from billing.charging import rules as charge_rules
from billing.charging.declines import explain_decline
from billing.documents import documents
from billing.documents.view import Formatter, InvoiceView, invoice_view
from billing.dunning import dunning
from billing.dunning.rules import StepAction, StepStatus
from billing.extensions import db
from billing.hosted import links, urls
from billing.invoicing import rules as invoice_rules
from billing.models import ChargeAttempt, Invoice, InvoiceDiscount, Refund
from billing.platform import clock, context
from billing.platform.errors import NotFound


class LinkNotValid(NotFound):
    """A link this service did not sign, signed with a dropped key, for no invoice, or
    expired: one answer for all, so that nothing tells a guesser whether an invoice exists.
    `invoice_id` is kept (never shown) when the signature held, so that a new link can be
    sent for that invoice."""

    code = "link_not_valid"

    def __init__(self, message: str, invoice_id: str | None = None) -> None:
        super().__init__(message)
        self.invoice_id = invoice_id


def open_link(token: str) -> Invoice:
    """The invoice a link names, while the link holds; LinkNotValid otherwise."""
    try:
        claim = links.verify(token, urls.link_keys())
    except links.BadLink as exc:
        raise LinkNotValid("this link is not valid") from exc
    # With what the page shows of it, in one statement: the invoice, its customer, its
    # lines and its payment attempts.
    invoice = (
        db.session.scalars(
            select(Invoice)
            .where(Invoice.number == claim.invoice_number)
            .options(
                joinedload(Invoice.customer),
                joinedload(Invoice.lines),
                joinedload(Invoice.charge_attempts),
            )
        )
        .unique()
        .one_or_none()
    )
    if invoice is None:
        raise LinkNotValid("this link is not valid")
    days = context.settings().hosted_link_days
    if links.expired(claim, urls.closed_at(invoice), clock.now(), days):
        raise LinkNotValid("this link has expired", invoice_id=invoice.id)
    return invoice


# --- what the page shows ------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentRow:
    on: str
    amount: str
    outcome: str
    detail: str | None


@dataclass(frozen=True)
class PlannedStep:
    on: str
    what: str


@dataclass(frozen=True)
class PayState:
    """Where paying stands: what the page offers and says."""

    payable: bool
    saved_card: bool
    # An attempt is on its way to Stripe or waiting for its answer.
    in_progress: bool
    # The customer's bank asks them to confirm the charge (3-D Secure) on this page.
    client_secret: str | None
    message: str | None

    @property
    def state(self) -> str:
        if self.client_secret:
            return "requires_action"
        if self.in_progress:
            return "processing"
        return "payable" if self.payable else "settled"


@dataclass(frozen=True)
class HostedPage:
    view: InvoiceView
    status: str
    amount_due: str
    amount_paid: str
    total: str
    payments: tuple[PaymentRow, ...]
    plan: tuple[PlannedStep, ...]
    versions: tuple[documents.DocumentVersion, ...]
    pay: PayState


_OUTCOMES = {
    "succeeded": "Paid",
    "failed": "Declined",
    "requires_action": "Waiting for your bank's confirmation",
    "pending": "Processing",
    "sending": "Processing",
    "unknown": "Processing",
    "canceled": "Canceled",
}
_PLANNED = {
    StepAction.RETRY_CHARGE: "We will try your card again",
    StepAction.SEND_REMINDER: "We will send you a reminder",
    StepAction.FINAL_NOTICE: "We will send a final notice",
    StepAction.MARK_UNCOLLECTIBLE: "The invoice will be marked uncollectible",
}


def attempts_of(invoice: Invoice) -> list[ChargeAttempt]:
    """Its payment attempts, newest first."""
    return sorted(invoice.charge_attempts, key=lambda a: (a.created_at, a.id), reverse=True)


def pay_state(invoice: Invoice, attempts: list[ChargeAttempt]) -> PayState:
    payable = invoice.status in invoice_rules.PAYABLE and invoice.amount_due > 0
    latest = attempts[0] if attempts else None
    in_progress = any(a.status in charge_rules.IN_FLIGHT for a in attempts)
    secret = None
    message = None
    saved_card = bool(invoice.customer.default_payment_method)
    if latest is not None and payable:
        if latest.status == "requires_action" and latest.client_secret:
            secret = latest.client_secret
            message = "Your bank asks you to confirm this payment."
        elif latest.status == "failed":
            explanation = explain_decline(latest.decline_code)
            message = f"The last payment was declined. {explanation.reason}"
            if (
                explanation.hard
                and latest.payment_method == invoice.customer.default_payment_method
            ):
                # That card will be declined again: only a new one is offered.
                saved_card = False
                message += " Please pay with another card."
        elif in_progress:
            message = "Your payment is being processed."
    if invoice.status == invoice_rules.InvoiceStatus.PAID:
        message = "This invoice is paid. Thank you."
    return PayState(
        payable=payable,
        saved_card=saved_card,
        in_progress=in_progress and secret is None,
        client_secret=secret,
        message=message,
    )


def page_of(invoice: Invoice) -> HostedPage:
    """The page of an invoice as `open_link` loads it. Discounts are read only when the
    invoice has a discount, refunds only when something was paid."""
    session = db.session()
    discounts = (
        list(
            session.scalars(select(InvoiceDiscount).where(InvoiceDiscount.invoice_id == invoice.id))
        )
        if invoice.discount
        else []
    )
    locale = invoice.customer.locale or "en_US"
    formatter = Formatter(locale, invoice.currency)
    view = invoice_view(invoice, documents.seller(), locale, discounts=discounts)
    attempts = attempts_of(invoice)
    refunds = (
        session.scalars(
            select(Refund).where(Refund.invoice_id == invoice.id).order_by(Refund.created_at.desc())
        ).all()
        if invoice.amount_paid
        else []
    )
    rows = [
        PaymentRow(
            on=formatter.date(a.created_at) or "",
            amount=formatter.money(a.amount),
            outcome=_OUTCOMES.get(a.status, a.status),
            detail=a.failure_message if a.status == "failed" else None,
        )
        for a in attempts
    ] + [
        PaymentRow(
            on=formatter.date(r.created_at) or "",
            amount=formatter.money(-r.amount),
            outcome="Refunded" if r.status == "succeeded" else f"Refund {r.status}",
            detail=r.reason,
        )
        for r in refunds
    ]
    plan: list[PlannedStep] = []
    if invoice.status in (
        invoice_rules.InvoiceStatus.OPEN,
        invoice_rules.InvoiceStatus.UNCOLLECTIBLE,
    ):
        plan = [
            PlannedStep(formatter.date(step.on) or "", _PLANNED[step.action])
            for step in sorted(
                dunning.plan_of(invoice, attempts),
                key=lambda step: (step.on, list(_PLANNED).index(step.action)),
            )
            if step.status == StepStatus.PLANNED
        ]
    return HostedPage(
        view=view,
        status=invoice.status,
        amount_due=formatter.money(invoice.amount_due),
        amount_paid=formatter.money(invoice.amount_paid),
        total=formatter.money(invoice.total),
        payments=tuple(rows),
        plan=tuple(plan),
        versions=tuple(documents.versions_of(invoice.id)),
        pay=pay_state(invoice, attempts),
    )
