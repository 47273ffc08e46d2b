"""Credit note rules: what may be credited, how its tax is reversed, how it is settled. Pure.

What a credit note credits. Each of its lines either names a line of the invoice (a
quantity of its units, or a net amount) or is a free amount (tax included) that is spread
over the invoice's tax rates. A line of the invoice is credited on its net amount (its
amount less its share of the invoice's discounts), never beyond what is left of it; a
line with nothing positive to credit (a proration credit) cannot be named.

How its tax is reversed. Per tax rate, the tax credited so far is always the rate's tax on
the invoice times the share of the rate's net already credited, rounded halves away from
zero (a credit note's tax at a rate is the growth of that figure): whatever the number of
credit notes and how they split the invoice, crediting all of a rate's net reverses
exactly the tax the invoice charged at that rate, never a minor unit more or less. A free
amount is first spread over the rates in proportion to what each still has to credit
(largest remainders), and each rate's part is split into net and tax in the proportion the
rate still has.

How it is settled. Its total is split, as the caller chooses, between reducing what the
invoice still asks (only while it is open), a refund of what was paid, the customer's
balance and a settlement out of band; the parts sum to the total, none is negative.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from billing.invoicing.rules import largest_remainders


class CreditNoteStatus(enum.StrEnum):
    ISSUED = "issued"
    VOID = "void"


class CreditNoteReason(enum.StrEnum):
    DUPLICATE = "duplicate"
    ORDER_CHANGE = "order_change"
    PRODUCT_UNSATISFACTORY = "product_unsatisfactory"
    FRAUDULENT = "fraudulent"
    OTHER = "other"


class Settlement(enum.StrEnum):
    # Lowers what the open invoice still asks for.
    AMOUNT_DUE = "amount_due"
    # Money given back on the invoice's payment, through the refund path.
    REFUND = "refund"
    # Credit into the customer's balance, for the next invoices.
    CREDIT_BALANCE = "credit_balance"
    # Settled outside this service (a bank transfer by finance): recorded only.
    OUT_OF_BAND = "out_of_band"


def format_credit_note_number(year: int, sequence: int) -> str:
    """A series of its own, without gaps within a calendar year: CN-2026-000123."""
    return f"CN-{year:04d}-{sequence:06d}"


class CreditRefused(ValueError):
    """A credit note the rules do not allow; `code` and `param` say why and where."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class InvoiceLineFacts:
    id: str
    description: str
    quantity: int
    tax_rate: Decimal
    # The line's amount less its share of the invoice's discounts: what its tax was on.
    net: int
    tax: int


@dataclass(frozen=True)
class CreditedLine:
    """A line of an earlier credit note of the invoice that still stands (not void)."""

    invoice_line_id: str | None
    tax_rate: Decimal
    quantity: int | None
    amount: int
    tax: int


@dataclass(frozen=True)
class LineRequest:
    """A line of the invoice to credit: `quantity` of its units, or a net `amount`."""

    invoice_line_id: str
    quantity: int | None = None
    amount: int | None = None


@dataclass(frozen=True)
class CreditLine:
    invoice_line_id: str | None
    description: str
    quantity: int | None
    tax_rate: Decimal
    amount: int
    tax: int


@dataclass(frozen=True)
class CreditComputation:
    lines: list[CreditLine]
    subtotal: int
    tax: int
    total: int
    tax_by_rate: dict[Decimal, int]


def _round(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _share(whole: int, numerator: int, denominator: int) -> int:
    """whole * numerator / denominator, rounded halves away from zero, in integers' terms."""
    if denominator == 0:
        return 0
    return _round(Decimal(whole) * numerator / denominator)


@dataclass
class _Rate:
    net: int = 0
    tax: int = 0
    credited_net: int = 0
    credited_tax: int = 0

    @property
    def net_left(self) -> int:
        return self.net - self.credited_net

    @property
    def tax_left(self) -> int:
        return self.tax - self.credited_tax

    def reverse_tax(self, net: int) -> int:
        """The tax reversed with `net` more of this rate credited (see the module)."""
        if net >= self.net_left:
            return self.tax_left
        after = _share(self.tax, self.credited_net + net, self.net)
        return max(0, min(self.tax_left, after - self.credited_tax))

    def credit(self, net: int, tax: int) -> None:
        self.credited_net += net
        self.credited_tax += tax


@dataclass
class _Line:
    facts: InvoiceLineFacts
    credited_quantity: int = 0
    credited_net: int = 0
    rates: dict[Decimal, _Rate] = field(default_factory=dict)

    @property
    def net_left(self) -> int:
        return self.facts.net - self.credited_net


def compute_credit(
    invoice_lines: Sequence[InvoiceLineFacts],
    credited: Iterable[CreditedLine],
    requested: Sequence[LineRequest],
    free_amount: int | None = None,
    free_description: str = "Credit",
) -> CreditComputation:
    """The lines of a new credit note on an invoice with `invoice_lines`, given what earlier
    credit notes of it `credited`; CreditRefused when something asked is not creditable."""
    lines = {line.id: _Line(line) for line in invoice_lines}
    rates: dict[Decimal, _Rate] = {}
    for facts in invoice_lines:
        if facts.net > 0:
            rate = rates.setdefault(facts.tax_rate, _Rate())
            rate.net += facts.net
            rate.tax += facts.tax
    for done in credited:
        rates.setdefault(done.tax_rate, _Rate()).credit(done.amount, done.tax)
        if done.invoice_line_id in lines:
            line_state = lines[done.invoice_line_id]
            line_state.credited_net += done.amount
            line_state.credited_quantity += done.quantity or 0
    if not requested and not free_amount:
        raise CreditRefused("credit_note_empty", "a credit note needs lines or an amount", "lines")
    out: list[CreditLine] = []
    for index, request in enumerate(requested):
        out.append(_credit_line(lines, rates, request, f"lines[{index}]"))
    if free_amount is not None:
        out.extend(_free_credit(rates, free_amount, free_description))
    subtotal = sum(line.amount for line in out)
    tax = sum(line.tax for line in out)
    by_rate: dict[Decimal, int] = {}
    for line in out:
        by_rate[line.tax_rate] = by_rate.get(line.tax_rate, 0) + line.tax
    return CreditComputation(out, subtotal, tax, subtotal + tax, by_rate)


def _credit_line(
    lines: Mapping[str, _Line], rates: Mapping[Decimal, _Rate], request: LineRequest, param: str
) -> CreditLine:
    state = lines.get(request.invoice_line_id)
    if state is None:
        raise CreditRefused(
            "invoice_line_not_found",
            f"the invoice has no line '{request.invoice_line_id}'",
            f"{param}.invoice_line",
        )
    facts = state.facts
    if facts.net <= 0:
        raise CreditRefused(
            "line_not_creditable", "this line has nothing to credit", f"{param}.invoice_line"
        )
    if (request.quantity is None) == (request.amount is None):
        raise CreditRefused(
            "credit_line_invalid", "give a quantity or an amount to credit, not both", param
        )
    if request.quantity is not None:
        left = facts.quantity - state.credited_quantity
        if request.quantity <= 0 or request.quantity > left:
            raise CreditRefused(
                "credit_exceeds_invoice",
                f"at most {left} unit(s) of this line can still be credited",
                f"{param}.quantity",
            )
        if request.quantity == left:
            net = state.net_left
        else:
            net = min(state.net_left, _share(facts.net, request.quantity, facts.quantity))
    else:
        net = int(request.amount or 0)
    rate = rates[facts.tax_rate]
    if net <= 0 or net > min(state.net_left, rate.net_left):
        raise CreditRefused(
            "credit_exceeds_invoice",
            f"at most {max(0, min(state.net_left, rate.net_left))} of this line's net amount "
            "can still be credited",
            f"{param}.amount" if request.amount is not None else f"{param}.quantity",
        )
    tax = rate.reverse_tax(net)
    rate.credit(net, tax)
    state.credited_net += net
    state.credited_quantity += request.quantity or 0
    return CreditLine(facts.id, facts.description, request.quantity, facts.tax_rate, net, tax)


def _free_credit(rates: Mapping[Decimal, _Rate], amount: int, description: str) -> list[CreditLine]:
    open_rates = [(r, state) for r, state in sorted(rates.items()) if state.net_left > 0]
    left = sum(state.net_left + state.tax_left for _, state in open_rates)
    if amount <= 0 or amount > left:
        raise CreditRefused(
            "credit_exceeds_invoice",
            f"at most {max(left, 0)} can still be credited on this invoice",
            "amount",
        )
    parts = largest_remainders(amount, [s.net_left + s.tax_left for _, s in open_rates])
    out = []
    for (rate, state), gross in zip(open_rates, parts, strict=True):
        if not gross:
            continue
        gross_left = state.net_left + state.tax_left
        net = state.net_left if gross == gross_left else _share(gross, state.net_left, gross_left)
        tax = gross - net
        state.credit(net, tax)
        label = description if len(open_rates) == 1 else f"{description} ({rate.normalize()} %)"
        out.append(CreditLine(None, label, None, rate, net, tax))
    return out


def settle(
    total: int,
    requested: Mapping[Settlement, int] | None,
    *,
    invoice_open: bool,
    amount_due: int,
    refundable: int,
) -> dict[Settlement, int]:
    """How a credit note of `total` is settled: as asked, or (nothing asked, on an open
    invoice that still asks at least that much) all against the amount due."""
    if not requested:
        if invoice_open and total <= amount_due:
            return {Settlement.AMOUNT_DUE: total}
        raise CreditRefused(
            "settlement_required",
            "say how the credit note is settled: amount_due, refund, credit_balance, "
            "out_of_band, summing to its total",
            "settlement",
        )
    parts = {kind: int(requested.get(kind, 0)) for kind in Settlement}
    if any(part < 0 for part in parts.values()):
        raise CreditRefused(
            "settlement_invalid", "settlement parts cannot be negative", "settlement"
        )
    if sum(parts.values()) != total:
        raise CreditRefused(
            "settlement_mismatch",
            f"the settlement parts sum to {sum(parts.values())}, the credit note's total is "
            f"{total}",
            "settlement",
        )
    if parts[Settlement.AMOUNT_DUE] and not invoice_open:
        raise CreditRefused(
            "settlement_invalid",
            "only an open invoice's amount due can be reduced",
            "settlement.amount_due",
        )
    if parts[Settlement.AMOUNT_DUE] > amount_due:
        raise CreditRefused(
            "settlement_exceeds_amount_due",
            f"the invoice still asks {amount_due}",
            "settlement.amount_due",
        )
    if parts[Settlement.REFUND] > refundable:
        raise CreditRefused(
            "settlement_exceeds_payment",
            f"at most {refundable} can be refunded on this invoice",
            "settlement.refund",
        )
    return {kind: part for kind, part in parts.items() if part}
