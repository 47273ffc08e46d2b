from decimal import Decimal

import pytest

from billing.domain.money import (
    CurrencyMismatch,
    Money,
    UnknownCurrency,
    currency_exponent,
    normalize_currency,
    round_half_up,
)


def test_currency_codes_are_normalized_to_lower_case_iso_codes():
    assert normalize_currency(" EUR ") == "eur"
    assert normalize_currency("jpy") == "jpy"


@pytest.mark.parametrize("code", ["", "EU", "EURO", "XYZ", "123", "e u"])
def test_unknown_currencies_are_refused(code):
    with pytest.raises(UnknownCurrency):
        normalize_currency(code)


@pytest.mark.parametrize(("code", "exponent"), [("eur", 2), ("usd", 2), ("jpy", 0), ("kwd", 3)])
def test_each_currency_has_its_own_exponent(code, exponent):
    assert currency_exponent(code) == exponent


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
