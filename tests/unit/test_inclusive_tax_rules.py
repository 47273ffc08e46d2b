"""The tax-inclusive rule (billing.invoicing.rules): a rate's tax worked out of its gross
total, rounded once, and its lines' nets and taxes, over many amounts, rates and
currencies, mixed with exclusive lines."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.domain.money import charge_step, round_to_step
from billing.invoicing.rules import (
    DiscountTerms,
    InclusiveTaxDiscounted,
    TaxedLine,
    invoice_totals,
    line_amounts,
)

# Two-decimal, zero-decimal (JPY, ISK) and three-decimal (KWD, BHD: charged in tens of fils).
CURRENCIES = ["eur", "usd", "jpy", "isk", "kwd", "bhd"]
RATES = st.sampled_from(
    [Decimal(0), Decimal(5), Decimal(7), Decimal("7.7"), Decimal(19), Decimal("8.875")]
)


@st.composite
def invoices(draw, *, credits: bool = True, exclusive: bool = True):
    currency = draw(st.sampled_from(CURRENCIES))
    step = charge_step(currency)
    unit = st.integers(min_value=0, max_value=10_000_000).map(lambda n: n * step)
    if credits:
        unit = st.one_of(
            unit, st.integers(min_value=-1_000_000, max_value=-1).map(lambda n: n * step)
        )
    flag = st.booleans() if exclusive else st.just(True)
    lines = draw(
        st.lists(
            st.builds(TaxedLine, st.integers(1, 50), unit, RATES, flag), min_size=1, max_size=12
        )
    )
    return step, lines


def _groups(lines, totals):
    groups: dict[tuple[Decimal, bool], list[int]] = {}
    for index, line in enumerate(lines):
        groups.setdefault((line.tax_rate, line.tax_inclusive), []).append(index)
    return groups


@settings(max_examples=600, deadline=None)
@given(invoices())
def test_each_inclusive_rate_s_net_and_tax_add_up_to_its_gross_to_the_step(invoice):
    step, lines = invoice
    totals = invoice_totals(lines, step=step)
    for (rate, inclusive), indexes in _groups(lines, totals).items():
        gross = sum(lines[i].quantity * lines[i].unit_amount for i in indexes)
        net = sum(totals.line_nets[i] for i in indexes)
        tax = sum(totals.line_taxes[i] for i in indexes)
        if inclusive:
            assert tax == round_to_step(Decimal(gross) * rate / (100 + rate), step)
            assert net + tax == gross
        else:
            assert tax == round_to_step(Decimal(gross) * rate / 100, step)
            assert net == gross
        for i in indexes:
            line_gross = lines[i].quantity * lines[i].unit_amount
            exact = Decimal(line_gross) * rate / ((100 + rate) if inclusive else 100)
            # Its share of its rate's tax: within one charge step of its own exact tax.
            assert abs(totals.line_taxes[i] - exact) < step
            assert totals.line_taxes[i] % step == 0 and totals.line_nets[i] % step == 0
            if inclusive:
                assert totals.line_nets[i] + totals.line_taxes[i] == line_gross
    assert sum(totals.line_nets) == totals.subtotal
    assert sum(totals.line_taxes) == totals.tax == sum(totals.tax_by_rate.values())
    assert totals.total == totals.subtotal + totals.tax
    assert totals.discount == 0


@settings(max_examples=400, deadline=None)
@given(invoices(exclusive=False))
def test_an_all_inclusive_invoice_totals_the_gross_amounts_given(invoice):
    step, lines = invoice
    totals = invoice_totals(lines, step=step)
    assert totals.total == sum(line.quantity * line.unit_amount for line in lines)


@settings(max_examples=300, deadline=None)
@given(invoices())
def test_exclusive_lines_are_taxed_as_before_whatever_inclusive_lines_sit_beside_them(invoice):
    step, lines = invoice
    exclusive = [i for i, line in enumerate(lines) if not line.tax_inclusive]
    alone = invoice_totals([lines[i][:3] for i in exclusive], step=step)
    mixed = invoice_totals(lines, step=step)
    assert [mixed.line_taxes[i] for i in exclusive] == list(alone.line_taxes)
    assert [mixed.line_nets[i] for i in exclusive] == list(alone.line_nets)


def test_a_rate_s_tax_is_rounded_once_on_its_gross_and_its_lines_share_it():
    # Each line's exact tax is 159.66..: rounded alone, three lines would take 480.
    lines = [TaxedLine(1, 1000, Decimal(19), True)] * 3
    totals = invoice_totals(lines, step=1)
    assert totals.tax == 479
    assert totals.line_taxes == (160, 160, 159)
    assert totals.line_nets == (840, 840, 841)
    assert totals.subtotal == 2521
    assert totals.total == 3000
    assert totals.tax_by_rate == {Decimal(19): 479}


def test_inclusive_and_exclusive_lines_at_one_rate_are_two_groups():
    lines = [TaxedLine(1, 1190, Decimal(19), True), TaxedLine(1, 1000, Decimal(19))]
    totals = invoice_totals(lines, step=1)
    assert totals.line_nets == (1000, 1000)
    assert totals.line_taxes == (190, 190)
    assert totals.tax_by_rate == {Decimal(19): 380}
    assert totals.total == 1190 + 1190


@pytest.mark.parametrize(
    ("currency", "gross", "rate", "tax"),
    [
        ("jpy", 1100, Decimal(10), 100),
        ("jpy", 999, Decimal(10), 91),  # 90.8.. yen
        ("jpy", 1080, Decimal(8), 80),
        ("kwd", 1050, Decimal(5), 50),  # fils: 1.050 KWD
        ("kwd", 1000, Decimal(5), 50),  # 47.6 fils, rounded to the charge step of ten
        ("bhd", 1100, Decimal(10), 100),
        ("bhd", 2330, Decimal(10), 210),  # 211.8 fils, rounded to the charge step of ten
        ("eur", 119, Decimal(19), 19),
        ("eur", 100, Decimal("7.7"), 7),
    ],
)
def test_zero_and_three_decimal_currencies(currency, gross, rate, tax):
    step = charge_step(currency)
    totals = invoice_totals([TaxedLine(1, gross, rate, True)], step=step)
    assert totals.tax == tax
    assert totals.subtotal == gross - tax
    assert totals.total == gross
    assert line_amounts(1, gross, rate, step=step, tax_inclusive=True).tax == tax
    assert line_amounts(1, gross, rate, step=step, tax_inclusive=True).amount == gross - tax


def test_a_credit_at_an_inclusive_rate_gives_back_its_tax():
    lines = [TaxedLine(2, 1190, Decimal(19), True), TaxedLine(1, -595, Decimal(19), True)]
    totals = invoice_totals(lines, step=1)
    assert totals.line_taxes == (380, -95)
    assert totals.line_nets == (2000, -500)
    assert totals.total == 1785


@pytest.mark.parametrize(
    "terms", [DiscountTerms(percent_off=Decimal(10)), DiscountTerms(amount_off=100)]
)
def test_discounts_on_an_invoice_with_inclusive_lines_are_refused(terms):
    lines = [TaxedLine(1, 1190, Decimal(19), True), TaxedLine(1, 1000, Decimal(19))]
    with pytest.raises(InclusiveTaxDiscounted):
        invoice_totals(lines, step=1, discounts=[terms])
