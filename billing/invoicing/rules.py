"""Invoice rules: line amounts, tax rounding, totals, the state machine, numbering.

Tax rounding rule: each line's tax is ``amount * rate / 100`` rounded to a whole
minor unit, halves away from zero; the invoice's tax is the sum of its lines'
taxes, and the per-rate summary is the sum of the lines at that rate. Rounding
per line (as Stripe does) keeps every printed line consistent with the total.

Where Stripe charges a currency less finely than its minor unit (tens of fils for the
three-decimal currencies: ``money.charge_step``), taxes round to that step instead and
line amounts must be multiples of it, so that every total is chargeable as printed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from billing.domain.money import AmountNotChargeable, round_to_step
from billing.domain.states import IllegalTransition, StateMachine

# Rates are percentages with at most four decimals (19, 7.7, 8.875).
TAX_RATE_QUANTUM = Decimal("0.0001")
MAX_TAX_RATE = Decimal(100)
# Far above any real invoice (ten billion euros), far below PostgreSQL's bigint, so that
# no sum of lines can overflow a column.
MAX_AMOUNT = 999_999_999_999
# Stripe's own limit on an invoice's items: an invoice stays readable on paper, renders
# in bounded time, and could be mirrored on Stripe as it is.
MAX_LINES_PER_INVOICE = 250


class AmountTooLarge(ValueError):
    pass


class InvoiceStatus(enum.StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class CollectionMethod(enum.StrEnum):
    CHARGE_AUTOMATICALLY = "charge_automatically"
    SEND_INVOICE = "send_invoice"


# Stripe Billing's invoice lifecycle: uncollectible invoices may still be paid or voided.
ALLOWED_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    InvoiceStatus.DRAFT: frozenset({InvoiceStatus.OPEN}),
    InvoiceStatus.OPEN: frozenset(
        {InvoiceStatus.PAID, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE}
    ),
    InvoiceStatus.UNCOLLECTIBLE: frozenset({InvoiceStatus.PAID, InvoiceStatus.VOID}),
    InvoiceStatus.PAID: frozenset(),
    InvoiceStatus.VOID: frozenset(),
}


class InvalidStateTransition(IllegalTransition):
    subject = "an invoice"


MACHINE = StateMachine(InvoiceStatus, ALLOWED_TRANSITIONS, InvalidStateTransition)


def require_transition(current: str, target: InvoiceStatus) -> InvoiceStatus:
    """`target`, if an invoice in `current` may become it; InvalidStateTransition if not."""
    return MACHINE.require(current, target)


# What a payment may settle: the states that may become paid. A charge is only started, and
# a payment only recorded as the invoice's, on one of these.
PAYABLE = (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)


def lines_are_editable(status: InvoiceStatus) -> bool:
    return status is InvoiceStatus.DRAFT


@dataclass(frozen=True)
class LineAmounts:
    amount: int
    tax: int


@dataclass(frozen=True)
class InvoiceTotals:
    subtotal: int
    tax: int
    total: int
    tax_by_rate: dict[Decimal, int]


def line_amounts(
    quantity: int, unit_amount: int, tax_rate: Decimal, *, step: int = 1
) -> LineAmounts:
    """A line's amount and tax; `step` is the currency's charge step (money.charge_step)."""
    if quantity < 0:
        raise ValueError("quantity cannot be negative")
    amount = quantity * unit_amount
    if abs(amount) > MAX_AMOUNT:
        raise AmountTooLarge(f"a line's amount cannot exceed {MAX_AMOUNT} minor units")
    if amount % step:
        raise AmountNotChargeable(
            f"a line's amount must be a multiple of {step} minor units in this currency "
            "(Stripe charges it no finer)"
        )
    tax = round_to_step(Decimal(amount) * tax_rate / 100, step)
    return LineAmounts(amount=amount, tax=tax)


def invoice_totals(lines: Iterable[tuple[int, int, Decimal]], *, step: int = 1) -> InvoiceTotals:
    """Totals of (quantity, unit_amount, tax_rate) lines, all in one currency whose charge
    step is `step`: every amount, and so the total, is a multiple of it."""
    subtotal = 0
    tax = 0
    by_rate: dict[Decimal, int] = {}
    for quantity, unit_amount, rate in lines:
        amounts = line_amounts(quantity, unit_amount, rate, step=step)
        subtotal += amounts.amount
        tax += amounts.tax
        by_rate[rate] = by_rate.get(rate, 0) + amounts.tax
    if abs(subtotal + tax) > MAX_AMOUNT:
        raise AmountTooLarge(f"an invoice's total cannot exceed {MAX_AMOUNT} minor units")
    return InvoiceTotals(subtotal=subtotal, tax=tax, total=subtotal + tax, tax_by_rate=by_rate)


def format_invoice_number(year: int, sequence: int) -> str:
    """Numbers run without gaps within a calendar year: INV-2026-000123."""
    return f"INV-{year:04d}-{sequence:06d}"
