"""Invoice rules: line amounts, tax rounding, totals, the state machine, numbering.

Tax rounding rule (EN 16931, docs/design/taxes.md): the tax of each rate is the rate's
taxable total (its lines' amounts less their discounts) times the rate, rounded *once* to
the charge step, halves away from zero; the invoice's tax is the sum of its rates' taxes.
Line amounts stay exact. Each line's ``tax`` is its share of its rate's tax: the floor of
its exact tax (``net * rate / 100``, in charge steps), plus one step to the lines with the
largest remainders (ties to the earlier line) until the rate's tax is reached; so a rate's
lines add up exactly to its tax, whatever their signs.

Tax-inclusive rule. A line taxed at an inclusive rate is given tax included: its
``quantity * unit_amount`` is its gross. Its rate's tax comes from the rate's gross total
instead, rounded once as above: ``tax = gross * rate / (100 + rate)`` rounded to the charge
step, halves away from zero, and the rate's net is ``gross - tax``. Each line's tax is its
share of that tax by the same floors and largest remainders (its exact share being
``gross * rate / (100 + rate)``), and its net ``amount`` is its gross less its tax; so each
line's net and tax add up to its gross, its rate's lines add up exactly to the rate's net
and tax, and the invoice's total is the sum of the gross amounts given. Lines at the same
percentage but one inclusive and one exclusive are two groups, each rounded by its own
rule: an invoice may mix them. Discounts do not apply to tax-inclusive lines yet (a
discount on a gross price would change its net and its tax at once, and the discounts'
amounts would no longer be the invoice's discount): `invoice_totals` refuses the pair.

Where Stripe charges a currency less finely than its minor unit (tens of fils for the
three-decimal currencies: ``money.charge_step``), taxes round to that step instead and
line amounts must be multiples of it, so that every total is chargeable as printed.

Discount rounding rule (docs/design/discounts.md). An invoice's discounts apply one after
the other, in the order they were attached (oldest first). Each works on a *base*: what
the positive lines have left once the discounts before it are taken off. Lines with a
negative amount (proration credits) get no discount and keep their own tax.

- percent off: ``base * percent / 100`` rounded to the charge step, halves away from zero;
- amount off: ``min(amount_off, base)``, the coupon's amount rounded down to the step;
- neither ever takes the invoice below zero: each is capped at
  ``subtotal - the discounts before it`` (a credit line may already have eaten the
  positive lines), and at zero when that is negative.

A discount's amount is shared among the positive lines in proportion to what each has
left, by largest remainders in units of the charge step (ties to the earlier line), so
that each line's share is a multiple of the step and the shares add up exactly. Tax is
then computed on the discounted amounts, per rate, by the tax rounding rule above. So,
always: total = subtotal - discount + tax; the lines' discount_amounts add up to the
invoice's discount, and so do the discounts' amounts; the tax is the sum of the lines'
taxes, and each rate's tax is its rounded taxable total times the rate; and no line's
discount exceeds its amount.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import NamedTuple

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
    amount: int  # net: for a tax-inclusive line, its gross less its tax
    tax: int


class TaxedLine(NamedTuple):
    """A line as the totals take it: a tax-inclusive line's unit_amount holds its tax."""

    quantity: int
    unit_amount: int
    tax_rate: Decimal
    tax_inclusive: bool = False


class InclusiveTaxDiscounted(ValueError):
    pass


@dataclass(frozen=True)
class DiscountTerms:
    """What one discount takes: a percentage, or an amount in the invoice's currency."""

    percent_off: Decimal | None = None
    amount_off: int | None = None

    def __post_init__(self) -> None:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError("a discount is a percentage or an amount, not both or neither")


@dataclass(frozen=True)
class InvoiceTotals:
    subtotal: int  # the lines' net amounts before discounts
    tax: int
    total: int
    tax_by_rate: dict[Decimal, int]
    discount: int = 0
    # In the order of the lines given: each one's share of the discounts, and its tax.
    line_discounts: tuple[int, ...] = ()
    line_taxes: tuple[int, ...] = ()
    # In the order of the discounts given: what each took.
    discount_amounts: tuple[int, ...] = ()
    # In the order of the lines given: each one's net amount before discounts (for a
    # tax-inclusive line, its gross less its share of its rate's tax).
    line_nets: tuple[int, ...] = ()


def line_amounts(
    quantity: int,
    unit_amount: int,
    tax_rate: Decimal,
    *,
    step: int = 1,
    tax_inclusive: bool = False,
) -> LineAmounts:
    """A line's net amount and tax on its own; `step` is the currency's charge step
    (money.charge_step). On an invoice, its tax is its share of its rate's
    (`invoice_totals`)."""
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
    if tax_inclusive:
        tax = round_to_step(Decimal(amount) * tax_rate / (100 + tax_rate), step)
        return LineAmounts(amount=amount - tax, tax=tax)
    tax = round_to_step(Decimal(amount) * tax_rate / 100, step)
    return LineAmounts(amount=amount, tax=tax)


def invoice_totals(
    lines: Iterable[tuple[int, int, Decimal] | TaxedLine],
    *,
    step: int = 1,
    discounts: Sequence[DiscountTerms] = (),
) -> InvoiceTotals:
    """Totals of (quantity, unit_amount, tax_rate[, tax_inclusive]) lines, all in one
    currency whose charge step is `step`, less `discounts` in their order (the rules in this
    module's docstring): every amount, and so the total, is a multiple of the step."""
    given = [TaxedLine(*line) for line in lines]
    inclusive = [line.tax_inclusive for line in given]
    if discounts and any(inclusive):
        raise InclusiveTaxDiscounted("discounts do not apply to tax-inclusive lines")
    amounts = [line_amounts(q, u, rate, step=step).amount for q, u, rate, _ in given]
    line_discounts, discount_amounts = allocate_discounts(amounts, discounts, step=step)
    bases = [amount - discount for amount, discount in zip(amounts, line_discounts, strict=True)]
    line_taxes, by_rate = tax_per_rate(
        [line.tax_rate for line in given], bases, step=step, inclusive=inclusive
    )
    # A tax-inclusive line's net is what its gross keeps once its tax is taken out.
    nets = [
        amount - tax if incl else amount
        for amount, tax, incl in zip(amounts, line_taxes, inclusive, strict=True)
    ]
    subtotal = sum(nets)
    tax = sum(by_rate.values())
    discount = sum(discount_amounts)
    total = subtotal - discount + tax
    if (
        abs(subtotal) > MAX_AMOUNT
        or abs(total) > MAX_AMOUNT
        or abs(sum(amounts) - discount) > MAX_AMOUNT
    ):
        raise AmountTooLarge(f"an invoice's total cannot exceed {MAX_AMOUNT} minor units")
    return InvoiceTotals(
        subtotal=subtotal,
        tax=tax,
        total=total,
        tax_by_rate=by_rate,
        discount=discount,
        line_discounts=tuple(line_discounts),
        line_taxes=tuple(line_taxes),
        discount_amounts=tuple(discount_amounts),
        line_nets=tuple(nets),
    )


def tax_per_rate(
    rates: Sequence[Decimal],
    bases: Sequence[int],
    *,
    step: int = 1,
    inclusive: Sequence[bool] = (),
) -> tuple[list[int], dict[Decimal, int]]:
    """Each line's tax, and each rate's, for lines taxed at `rates` on `bases` (multiples of
    `step`): nets, or for the lines flagged in `inclusive`, gross amounts; by the tax
    rounding rule and the tax-inclusive rule in this module's docstring. Inclusive and
    exclusive lines at one percentage are rounded as two groups; `tax_by_rate` adds them."""
    flags = list(inclusive) or [False] * len(rates)
    by_rate: dict[Decimal, int] = {}
    members: dict[tuple[Decimal, bool], list[int]] = {}
    for index, (rate, flag) in enumerate(zip(rates, flags, strict=True)):
        members.setdefault((rate, flag), []).append(index)
    line_taxes = [0] * len(rates)
    for (rate, flag), indexes in members.items():
        divisor = 100 + rate if flag else Decimal(100)
        rate_tax = round_to_step(Decimal(sum(bases[i] for i in indexes)) * rate / divisor, step)
        by_rate[rate] = by_rate.get(rate, 0) + rate_tax
        exact = [Decimal(bases[i]) * rate / divisor / step for i in indexes]
        for i, units in zip(indexes, spread_by_remainders(rate_tax // step, exact), strict=True):
            line_taxes[i] = units * step
    return line_taxes, by_rate


def spread_by_remainders(units: int, exact: Sequence[Decimal]) -> list[int]:
    """`units` (the sum of `exact`, rounded) shared out: each part's floor, plus one to the
    parts with the largest remainders (ties to the earlier part) until `units` is reached;
    whatever their signs."""
    floors = [int(x.to_integral_value(rounding=ROUND_FLOOR)) for x in exact]
    # Never negative and at most one per part: the rounded sum lies between the sum of
    # the floors and the sum of the ceilings.
    leftover = units - sum(floors)
    by_remainder = sorted(range(len(exact)), key=lambda i: (floors[i] - exact[i], i))
    for i in by_remainder[:leftover]:
        floors[i] += 1
    return floors


def allocate_discounts(
    amounts: Sequence[int], discounts: Sequence[DiscountTerms], *, step: int = 1
) -> tuple[list[int], list[int]]:
    """Each line's share of the discounts, and each discount's amount (the rule in this
    module's docstring). `amounts` are multiples of `step`."""
    left = [max(amount, 0) for amount in amounts]  # what each line has not had taken off
    shares = [0] * len(amounts)
    taken: list[int] = []
    room = max(sum(amounts), 0)  # no discount takes the invoice below zero
    for terms in discounts:
        base = sum(left)
        if terms.percent_off is not None:
            wanted = round_to_step(Decimal(base) * terms.percent_off / 100, step)
        else:
            wanted = (terms.amount_off or 0) // step * step
        amount = max(min(wanted, base, room), 0)
        for index, units in enumerate(
            largest_remainders(amount // step, [x // step for x in left])
        ):
            shares[index] += units * step
            left[index] -= units * step
        room -= amount
        taken.append(amount)
    return shares, taken


def largest_remainders(units: int, weights: Sequence[int]) -> list[int]:
    """`units` shared in proportion to `weights` (units <= sum of weights): each gets the
    floor of its exact share, and the units left over go one each to the largest
    remainders, the earlier weight first on a tie; so no share exceeds its weight."""
    whole = sum(weights)
    if units == 0 or whole == 0:
        return [0] * len(weights)
    shares = [units * weight // whole for weight in weights]
    remainders = [units * weight % whole for weight in weights]
    leftover = units - sum(shares)
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:leftover]:
        shares[index] += 1
    return shares


def format_invoice_number(year: int, sequence: int) -> str:
    """Numbers run without gaps within a calendar year: INV-2026-000123."""
    return f"INV-{year:04d}-{sequence:06d}"
