from decimal import Decimal

import pytest

from billing.invoicing.rules import (
    InvalidStateTransition,
    InvoiceStatus,
    format_invoice_number,
    invoice_totals,
    line_amounts,
    lines_are_editable,
    require_transition,
)

S = InvoiceStatus


def test_a_line_amount_is_quantity_times_unit_amount():
    assert line_amounts(3, 1250, Decimal(0)).amount == 3750


def test_line_tax_is_rounded_half_up_to_a_minor_unit():
    # 19% of 250 = 47.5 -> 48; 19% of 150 = 28.5 -> 29
    assert line_amounts(1, 250, Decimal(19)).tax == 48
    assert line_amounts(1, 150, Decimal(19)).tax == 29
    # 7.7% of 1000 = 77 exactly
    assert line_amounts(1, 1000, Decimal("7.7")).tax == 77


def test_tax_is_rounded_once_per_rate_on_its_taxable_total_not_per_line():
    # Two lines of 19% of 250 each: 19% of 500 is 95, where rounding each line gave 96.
    totals = invoice_totals([(1, 250, Decimal(19)), (1, 250, Decimal(19))])
    assert totals.tax == 95
    assert totals.tax_by_rate == {Decimal(19): 95}
    assert totals.subtotal == 500
    assert totals.total == 595


def test_each_line_gets_its_share_of_its_rate_s_tax_and_the_shares_add_up_exactly():
    # 47.5 and 47.5: floors 47 and 47, the one unit left to the earlier line on a tie.
    totals = invoice_totals([(1, 250, Decimal(19)), (1, 250, Decimal(19))])
    assert totals.line_taxes == (48, 47)
    # Three lines of 19% of 1: 0.19 each, 0.57 in all, rounded to 1, given to the first.
    totals = invoice_totals([(1, 1, Decimal(19))] * 3)
    assert totals.line_taxes == (1, 0, 0)


def test_a_negative_line_shares_its_rate_s_tax_by_floors_and_remainders_too():
    # 19% of 250 is 47.5, of -100 is -19: the rate's 150 net takes 28.5, rounded to 29.
    totals = invoice_totals([(1, 250, Decimal(19)), (1, -100, Decimal(19))])
    assert totals.tax == 29
    assert totals.line_taxes == (48, -19)
    # 47.5 and -47.5 floor to 47 and -48; the rate's tax is 0 (no net), so the one unit
    # left goes to the earlier of the equal remainders: a credit cancels its charge.
    totals = invoice_totals([(1, 250, Decimal(19)), (1, -250, Decimal(19))])
    assert totals.line_taxes == (48, -48)


def test_rates_are_rounded_each_on_its_own():
    totals = invoice_totals([(1, 250, Decimal(19)), (1, 250, Decimal(7)), (1, 250, Decimal(19))])
    # 19% of 500 = 95; 7% of 250 = 17.5 -> 18.
    assert totals.tax_by_rate == {Decimal(19): 95, Decimal(7): 18}
    assert totals.line_taxes == (48, 18, 47)


def test_totals_group_tax_by_rate():
    totals = invoice_totals([(2, 1000, Decimal(19)), (1, 500, Decimal(7)), (1, 100, Decimal(19))])
    assert totals.tax_by_rate == {Decimal(19): 380 + 19, Decimal(7): 35}
    assert totals.total == totals.subtotal + totals.tax


def test_zero_decimal_currencies_use_the_same_integer_rules():
    # JPY has no minor unit: 10% of 1,234 yen = 123.4 -> 123 yen.
    assert line_amounts(1, 1234, Decimal(10)).tax == 123


def test_negative_quantities_are_refused():
    with pytest.raises(ValueError):
        line_amounts(-1, 100, Decimal(0))


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.DRAFT, S.OPEN),
        (S.OPEN, S.PAID),
        (S.OPEN, S.VOID),
        (S.OPEN, S.UNCOLLECTIBLE),
        (S.UNCOLLECTIBLE, S.PAID),
        (S.UNCOLLECTIBLE, S.VOID),
    ],
)
def test_stripe_billing_transitions_are_allowed(current, target):
    assert require_transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.DRAFT, S.PAID),
        (S.DRAFT, S.VOID),
        (S.DRAFT, S.UNCOLLECTIBLE),
        (S.OPEN, S.DRAFT),
        (S.OPEN, S.OPEN),
        (S.PAID, S.VOID),
        (S.PAID, S.OPEN),
        (S.VOID, S.PAID),
        (S.VOID, S.OPEN),
        (S.UNCOLLECTIBLE, S.OPEN),
    ],
)
def test_other_transitions_are_refused(current, target):
    with pytest.raises(InvalidStateTransition):
        require_transition(current, target)


def test_only_drafts_have_editable_lines():
    assert lines_are_editable(S.DRAFT)
    assert not any(lines_are_editable(s) for s in S if s is not S.DRAFT)


def test_invoice_numbers_are_zero_padded_per_year():
    assert format_invoice_number(2026, 123) == "INV-2026-000123"
