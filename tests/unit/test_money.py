from decimal import Decimal

import pytest
from babel.numbers import get_currency_precision

from billing.domain.money import (
    STRIPE_CURRENCIES,
    AmountNotChargeable,
    CurrencyMismatch,
    Money,
    UnknownCurrency,
    UnsupportedCurrency,
    charge_step,
    currency_exponent,
    from_stripe_amount,
    normalize_currency,
    round_half_up,
    to_stripe_amount,
)
from billing.invoicing.rules import invoice_totals, line_amounts
from billing.subscriptions.rules import prorate

# Stripe's pages, section by section (https://docs.stripe.com/currencies), written out again
# here so that a slip in the table is caught by a second reading rather than copied.
ZERO_DECIMAL = set("bif clp djf gnf jpy kmf krw mga pyg rwf vnd vuv xaf xof xpf".split())
THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
# Special cases: no fractions can be charged, amounts still sent with two decimals.
WHOLE_UNITS_SENT_IN_HUNDREDTHS = {"isk", "ugx"}


def test_currency_codes_are_normalized_to_lower_case_iso_codes():
    assert normalize_currency(" EUR ") == "eur"
    assert normalize_currency("jpy") == "jpy"


@pytest.mark.parametrize("code", ["", "EU", "EURO", "XYZ", "123", "e u"])
def test_unknown_currencies_are_refused(code):
    with pytest.raises(UnknownCurrency):
        normalize_currency(code)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("eur", 2), ("usd", 2), ("jpy", 0), ("kwd", 3), ("isk", 0), ("ugx", 0), ("huf", 2)],
)
def test_each_currency_has_its_own_exponent(code, exponent):
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["xts", "dem", "XAU", "zwl"])
def test_iso_currencies_stripe_cannot_charge_are_refused_as_unsupported(code):
    with pytest.raises(UnsupportedCurrency):
        normalize_currency(code)


def test_the_table_holds_every_presentment_currency_and_the_three_decimal_ones():
    assert len(STRIPE_CURRENCIES) == 139
    assert {"usd", "eur", "isk", "huf", "twd", "ugx", *ZERO_DECIMAL, *THREE_DECIMAL} <= set(
        STRIPE_CURRENCIES
    )


@pytest.mark.parametrize("code", sorted(STRIPE_CURRENCIES))
def test_every_stripe_currency_follows_stripes_unit_rules(code):
    exponent = currency_exponent(code)
    step = charge_step(code)
    # Our minor unit is CLDR's, so what an invoice shows and what the API takes agree.
    assert exponent == get_currency_precision(code.upper())
    one_major_unit = 10**exponent
    if code in ZERO_DECIMAL:
        assert (exponent, to_stripe_amount(500, code)) == (0, 500)  # 500 JPY is amount=500
    elif code in THREE_DECIMAL:
        # 5.12 KWD is amount=5120: Stripe takes three decimals, the last one 0.
        assert (exponent, step, to_stripe_amount(5120, code)) == (3, 10, 5120)
        with pytest.raises(AmountNotChargeable):
            to_stripe_amount(5124, code)
    elif code in WHOLE_UNITS_SENT_IN_HUNDREDTHS:
        assert (exponent, to_stripe_amount(5, code)) == (0, 500)  # 5 ISK is amount=500
    else:
        # Two decimals on Stripe: 10.00 is amount=1000, in cents or in whole units.
        assert to_stripe_amount(10 * one_major_unit, code) == 1000


def _stripe_multiple(code):
    if code in THREE_DECIMAL:
        return 10
    if code in WHOLE_UNITS_SENT_IN_HUNDREDTHS:
        return 100
    return 1


@pytest.mark.parametrize("code", sorted(STRIPE_CURRENCIES))
def test_every_stripe_currency_turns_an_invoice_total_into_an_amount_stripe_accepts(code):
    step = charge_step(code)
    # Awkward lines: odd amounts, taxes that land between two chargeable amounts.
    lines = [(3, 333 * step, Decimal("19")), (1, 1001 * step, Decimal("7.7")), (7, step, 0)]
    total = invoice_totals(lines, step=step).total
    sent = to_stripe_amount(total, code)
    assert sent % _stripe_multiple(code) == 0
    assert from_stripe_amount(sent, code) == total  # the whole total, nothing lost
    # Prorations land on a chargeable amount too.
    assert (
        to_stripe_amount(prorate(1001 * step, 1, 11, 31, step=step), code)
        % (_stripe_multiple(code))
        == 0
    )


def test_a_three_decimal_tax_rounds_to_tens_of_fils_halves_away_from_zero():
    # 19% of 1.230 KWD is 0.2337 -> 0.230; 10% of 0.150 is 0.015 -> 0.020.
    assert line_amounts(1, 1230, Decimal(19), step=10).tax == 230
    assert line_amounts(1, 150, Decimal(10), step=10).tax == 20
    with pytest.raises(AmountNotChargeable):
        line_amounts(1, 1234, Decimal(0), step=10)


def test_money_adds_only_within_one_currency():
    assert Money(150, "eur") + Money(50, "EUR") == Money(200, "eur")
    with pytest.raises(CurrencyMismatch):
        Money(1, "eur") + Money(1, "usd")


def test_money_refuses_fractional_minor_units():
    with pytest.raises(TypeError):
        Money(1.5, "eur")  # type: ignore[arg-type]


def test_major_units_respect_the_exponent():
    assert Money(1999, "eur").as_decimal() == Decimal("19.99")
    assert Money(1999, "jpy").as_decimal() == Decimal(1999)
    assert Money(1999, "kwd").as_decimal() == Decimal("1.999")


@pytest.mark.parametrize(
    ("value", "rounded"),
    [("0.5", 1), ("1.5", 2), ("2.5", 3), ("2.4999", 2), ("-0.5", -1), ("-2.5", -3)],
)
def test_halves_round_away_from_zero(value, rounded):
    assert round_half_up(Decimal(value)) == rounded
