from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.credit_notes.rules import (
    CreditedLine,
    CreditRefused,
    InvoiceLineFacts,
    LineRequest,
    Settlement,
    compute_credit,
    settle,
)
from billing.domain.money import round_half_up
from billing.invoicing.rules import largest_remainders

RATES = [Decimal(r) for r in ("0", "7", "19", "7.7", "8.875", "20")]


@st.composite
def invoice_lines(draw):
    count = draw(st.integers(1, 5))
    lines = []
    for index in range(count):
        quantity = draw(st.integers(1, 12))
        unit = draw(st.integers(1, 500_000))
        rate = draw(st.sampled_from(RATES))
        amount = quantity * unit
        discount = draw(st.integers(0, amount // 2))
        net = amount - discount
        lines.append(
            InvoiceLineFacts(
                id=f"il_{index}",
                description=f"line {index}",
                quantity=quantity,
                tax_rate=rate,
                net=net,
                tax=round_half_up(net * rate / 100),
            )
        )
    return lines


def _by_rate(lines, attribute):
    totals: dict[Decimal, int] = {}
    for line in lines:
        totals[line.tax_rate] = totals.get(line.tax_rate, 0) + getattr(line, attribute)
    return totals


@settings(max_examples=300, deadline=None)
@given(invoice_lines(), st.data())
def test_credits_never_reverse_more_tax_than_charged_and_all_of_it_once_fully_credited(lines, data):
    credited: list[CreditedLine] = []
    for _ in range(data.draw(st.integers(1, 6))):
        line = data.draw(st.sampled_from(lines))
        kind = data.draw(st.sampled_from(["quantity", "amount", "free"]))
        try:
            if kind == "quantity":
                request = [LineRequest(line.id, quantity=data.draw(st.integers(1, line.quantity)))]
                result = compute_credit(lines, credited, request)
            elif kind == "amount":
                request = [LineRequest(line.id, amount=data.draw(st.integers(1, line.net + 1)))]
                result = compute_credit(lines, credited, request)
            else:
                result = compute_credit(lines, credited, [], data.draw(st.integers(1, 10**6)))
        except CreditRefused:
            continue
        assert result.total == result.subtotal + result.tax > 0
        assert all(c.amount >= 0 and c.tax >= 0 for c in result.lines)
        credited += [
            CreditedLine(c.invoice_line_id, c.tax_rate, c.quantity, c.amount, c.tax)
            for c in result.lines
        ]
    charged_net, charged_tax = _by_rate(lines, "net"), _by_rate(lines, "tax")
    done_net, done_tax = _by_rate(credited, "amount"), _by_rate(credited, "tax")
    for rate, tax in done_tax.items():
        assert done_net[rate] <= charged_net[rate]
        assert tax <= charged_tax[rate]
    # Whatever came before, crediting all that is left reverses exactly what was charged.
    left = sum(charged_net.values()) + sum(charged_tax.values())
    left -= sum(done_net.values()) + sum(done_tax.values())
    if left:
        rest = compute_credit(lines, credited, [], left)
        credited += [CreditedLine(None, c.tax_rate, None, c.amount, c.tax) for c in rest.lines]
    assert _by_rate(credited, "amount") == {r: n for r, n in charged_net.items()}
    assert _by_rate(credited, "tax") == {r: t for r, t in charged_tax.items()}


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_largest_remainders_split_the_whole_amount_in_proportion(amount, weights):
    if sum(weights) == 0:
        assert largest_remainders(amount, weights) == [0] * len(weights)
        return
    parts = largest_remainders(amount, weights)
    assert sum(parts) == amount
    total = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        assert abs(part * total - amount * weight) < total


def test_a_line_credited_by_quantity_in_thirds_reverses_its_tax_exactly():
    line = InvoiceLineFacts("il_1", "Seats", 3, Decimal(19), 9999, 1900)
    credited: list[CreditedLine] = []
    for _ in range(3):
        [credit] = compute_credit([line], credited, [LineRequest("il_1", quantity=1)]).lines
        credited.append(CreditedLine("il_1", credit.tax_rate, 1, credit.amount, credit.tax))
    assert [c.amount for c in credited] == [3333, 3333, 3333]
    assert sum(c.tax for c in credited) == 1900


def test_a_settlement_must_add_up_and_stay_within_what_each_way_allows():
    assert settle(100, None, invoice_open=True, amount_due=100, refundable=0) == {
        Settlement.AMOUNT_DUE: 100
    }
    for asked, code in [
        (None, "settlement_required"),
        ({Settlement.REFUND: 60, Settlement.OUT_OF_BAND: 30}, "settlement_mismatch"),
        ({Settlement.REFUND: 100}, "settlement_exceeds_payment"),
    ]:
        with pytest.raises(CreditRefused) as refused:
            settle(100, asked, invoice_open=False, amount_due=0, refundable=50)
        assert refused.value.code == code
    with pytest.raises(CreditRefused, match="open invoice"):
        settle(100, {Settlement.AMOUNT_DUE: 100}, invoice_open=False, amount_due=0, refundable=0)
