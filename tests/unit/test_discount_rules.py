"""The discount rounding rule (billing.invoicing.rules) and when discounts apply
(billing.discounts.rules), over many amounts, rates, currencies and discounts."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.discounts import rules
from billing.discounts.rules import Candidate, CouponDuration, CouponInvalid, CouponTerms
from billing.domain.money import charge_step, round_to_step
from billing.invoicing.rules import DiscountTerms, invoice_totals

# Two-decimal, zero-decimal (JPY, ISK) and three-decimal (KWD, charged in tens of fils).
CURRENCIES = ["eur", "usd", "jpy", "isk", "kwd", "bhd"]
RATES = st.sampled_from([Decimal(0), Decimal(7), Decimal("7.7"), Decimal(19), Decimal("8.875")])
PERCENTS = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(100), places=4)


@st.composite
def invoices(draw, *, credits: bool = True):
    currency = draw(st.sampled_from(CURRENCIES))
    step = charge_step(currency)
    unit = st.integers(min_value=0, max_value=10_000_000).map(lambda n: n * step)
    if credits:
        unit = st.one_of(
            unit, st.integers(min_value=-1_000_000, max_value=-1).map(lambda n: n * step)
        )
    lines = draw(st.lists(st.tuples(st.integers(1, 50), unit, RATES), min_size=0, max_size=12))
    discounts = draw(
        st.lists(
            st.one_of(
                PERCENTS.map(lambda p: DiscountTerms(percent_off=p)),
                st.integers(1, 50_000_000).map(lambda a: DiscountTerms(amount_off=a * step)),
            ),
            max_size=4,
        )
    )
    return currency, step, lines, discounts


@settings(max_examples=600, deadline=None)
@given(invoices())
def test_totals_always_add_up_whatever_the_amounts_rates_currencies_and_discounts(invoice):
    _, step, lines, discounts = invoice
    totals = invoice_totals(lines, step=step, discounts=discounts)
    amounts = [quantity * unit for quantity, unit, _ in lines]
    assert totals.total == totals.subtotal - totals.discount + totals.tax
    assert sum(totals.line_discounts) == totals.discount
    assert sum(totals.discount_amounts) == totals.discount
    assert sum(totals.line_taxes) == totals.tax
    assert totals.discount >= 0
    assert all(amount >= 0 for amount in totals.discount_amounts)
    for amount, discount in zip(amounts, totals.line_discounts, strict=True):
        assert 0 <= discount <= max(amount, 0)
        assert discount % step == 0
    assert all(tax % step == 0 for tax in totals.line_taxes)
    assert totals.discount <= max(totals.subtotal, 0)


@settings(max_examples=400, deadline=None)
@given(invoices(credits=False))
def test_an_invoice_without_credits_is_never_negative_and_each_line_is_taxed_on_its_rest(
    invoice,
):
    _, step, lines, discounts = invoice
    totals = invoice_totals(lines, step=step, discounts=discounts)
    assert totals.subtotal - totals.discount >= 0
    assert totals.tax >= 0 and totals.total >= 0
    for (quantity, unit, rate), discount, tax in zip(
        lines, totals.line_discounts, totals.line_taxes, strict=True
    ):
        rest = Decimal(quantity * unit - discount) * rate / 100
        # Its share of its rate's tax: within one charge step of its own exact tax.
        assert abs(tax - rest) < step


@settings(max_examples=400, deadline=None)
@given(invoices())
def test_each_rate_s_tax_is_its_taxable_total_times_the_rate_rounded_once(invoice):
    _, step, lines, discounts = invoice
    totals = invoice_totals(lines, step=step, discounts=discounts)
    nets: dict[Decimal, int] = {}
    shares: dict[Decimal, int] = {}
    for (quantity, unit, rate), discount, tax in zip(
        lines, totals.line_discounts, totals.line_taxes, strict=True
    ):
        nets[rate] = nets.get(rate, 0) + quantity * unit - discount
        shares[rate] = shares.get(rate, 0) + tax
        assert abs(tax - Decimal(quantity * unit - discount) * rate / 100) < step
    for rate, net in nets.items():
        assert totals.tax_by_rate[rate] == round_to_step(Decimal(net) * rate / 100, step)
        assert shares[rate] == totals.tax_by_rate[rate]


@settings(max_examples=300, deadline=None)
@given(invoices(credits=False), PERCENTS)
def test_a_percent_off_takes_the_percentage_of_the_subtotal_rounded_to_the_charge_step(
    invoice, percent
):
    _, step, lines, _ = invoice
    totals = invoice_totals(lines, step=step, discounts=[DiscountTerms(percent_off=percent)])
    exact = Decimal(totals.subtotal) * percent / 100
    assert abs(totals.discount - exact) <= Decimal(step) / 2
    assert totals.discount % step == 0


def test_a_percent_off_rounds_halves_away_from_zero():
    # 12.5% of 100 cents is 12.5: 13.
    totals = invoice_totals([(1, 100, Decimal(0))], discounts=[DiscountTerms(Decimal("12.5"))])
    assert totals.discount == 13
    # In yen, 10% of 5 yen is 0.5: 1 yen.
    assert (
        invoice_totals([(1, 5, Decimal(0))], discounts=[DiscountTerms(Decimal(10))]).discount == 1
    )


def test_three_decimal_currencies_discount_in_whole_tens_of_fils():
    # 15% of 1.230 KWD is 184.5 fils: 18.45 tens, rounded to 18 tens.
    totals = invoice_totals(
        [(1, 1230, Decimal(0))], step=10, discounts=[DiscountTerms(Decimal(15))]
    )
    assert totals.discount == 180


def test_an_amount_off_takes_no_more_than_the_invoice_and_leaves_credit_lines_alone():
    totals = invoice_totals(
        [(1, 1000, Decimal(19)), (1, -300, Decimal(19))],
        discounts=[DiscountTerms(amount_off=5000)],
    )
    # What the positive line has left, less the credit: the invoice goes to zero.
    assert totals.discount == 700
    assert totals.line_discounts == (700, 0)
    assert totals.line_taxes == (57, -57)
    assert totals.total == 0


def test_discounts_apply_in_order_each_on_what_the_ones_before_left():
    totals = invoice_totals(
        [(1, 10_000, Decimal(0))],
        discounts=[DiscountTerms(amount_off=2000), DiscountTerms(percent_off=Decimal(50))],
    )
    assert totals.discount_amounts == (2000, 4000)


def test_a_discount_is_shared_by_largest_remainders_and_the_tax_is_on_the_rest():
    # 10 cents over three equal lines: 3.33 each, the leftover cent to the first line.
    totals = invoice_totals(
        [(1, 100, Decimal(19)), (1, 100, Decimal(19)), (1, 100, Decimal(19))],
        discounts=[DiscountTerms(amount_off=10)],
    )
    assert totals.line_discounts == (4, 3, 3)
    # 19% of the 290 left is 55.1: 55, shared as 18.24, 18.43, 18.43 (floors 18 each, the
    # unit left to the larger remainder, the earlier on a tie).
    assert totals.line_taxes == (18, 19, 18)
    assert totals.total == 300 - 10 + 55


JAN_31 = datetime(2026, 1, 31, 9, tzinfo=UTC)


def test_a_repeating_discount_of_three_months_covers_periods_starting_within_them():
    end = rules.discount_end(JAN_31, CouponDuration.REPEATING, 3)
    assert end == datetime(2026, 4, 30, 9, tzinfo=UTC)
    starts = [JAN_31, datetime(2026, 2, 28, 9, tzinfo=UTC), datetime(2026, 3, 31, 9, tzinfo=UTC)]
    assert all(rules.applies_to_period(end, None, start) for start in starts)
    assert not rules.applies_to_period(end, None, datetime(2026, 4, 30, 9, tzinfo=UTC))


def test_once_and_forever_discounts_have_no_end_but_an_ended_one_applies_no_more():
    assert rules.discount_end(JAN_31, CouponDuration.ONCE, None) is None
    assert rules.discount_end(JAN_31, CouponDuration.FOREVER, None) is None
    assert rules.applies_to_period(None, None, datetime(2036, 1, 1, tzinfo=UTC))
    assert not rules.applies_to_period(None, JAN_31, JAN_31)


def _candidate(id_, subscription=None, invoice=None):
    return Candidate(id_, subscription, invoice, None, None)


def test_a_subscription_invoice_gets_the_subscriptions_discounts_else_the_customers():
    customer = _candidate("di_1")
    subscription = _candidate("di_2", subscription="sub_1")
    other = _candidate("di_3", subscription="sub_2")
    chosen = rules.select_discounts(
        [customer, subscription, other], subscription_id="sub_1", period_start=JAN_31
    )
    assert chosen == ["di_2"]
    assert rules.select_discounts(
        [customer, other], subscription_id="sub_1", period_start=JAN_31
    ) == ["di_1"]


def test_a_one_off_invoice_gets_its_own_and_the_customers_discounts_oldest_first():
    chosen = rules.select_discounts(
        [_candidate("di_2", invoice="in_1"), _candidate("di_1")],
        subscription_id=None,
        period_start=JAN_31,
    )
    assert chosen == ["di_1", "di_2"]


@pytest.mark.parametrize(
    ("terms", "param"),
    [
        (CouponTerms("x", CouponDuration.ONCE), "percent_off"),
        (CouponTerms("x", CouponDuration.ONCE, Decimal(10), 100, "eur"), "percent_off"),
        (CouponTerms("x", CouponDuration.ONCE, Decimal(0)), "percent_off"),
        (CouponTerms("x", CouponDuration.ONCE, Decimal("100.01")), "percent_off"),
        (CouponTerms("x", CouponDuration.ONCE, amount_off=100), "currency"),
        (CouponTerms("x", CouponDuration.ONCE, amount_off=1005, currency="kwd"), "amount_off"),
        (CouponTerms("x", CouponDuration.REPEATING, Decimal(10)), "duration_in_months"),
        (
            CouponTerms("x", CouponDuration.FOREVER, Decimal(10), duration_in_months=3),
            "duration_in_months",
        ),
    ],
)
def test_coupons_the_table_would_refuse_are_refused_naming_the_parameter(terms, param):
    with pytest.raises(CouponInvalid) as refused:
        rules.check_coupon(terms)
    assert refused.value.param == param


def test_a_discount_line_says_what_the_coupon_takes_off():
    assert rules.describe("Spring", Decimal("20.0000"), None, None) == "Spring (20% off)"
    assert rules.describe("Welcome", None, 500, "eur") == "Welcome (5.00 EUR off)"
    assert rules.describe("Welcome", None, 500, "jpy") == "Welcome (500 JPY off)"
