"""Amounts as EN 16931 writes them: decimal text in the currency's major unit.

EN 16931 allows at most two decimals on every amount (BR-DEC-*), so a three-decimal
currency's amounts are written with two: Stripe charges those currencies in tens of fils
(billing.domain.money.charge_step), so every amount our rules produce fits. One that does
not raises rather than being rounded: the e-invoice must state what was charged.
"""

from __future__ import annotations

from decimal import Decimal

from billing.domain.money import currency_exponent

MAX_AMOUNT_DECIMALS = 2


class AmountNotRepresentable(ValueError):
    pass


def amount_text(minor_units: int, currency: str) -> str:
    exponent = currency_exponent(currency.lower())
    value = Decimal(minor_units).scaleb(-exponent)
    places = min(exponent, MAX_AMOUNT_DECIMALS)
    written = value.quantize(Decimal(1).scaleb(-places))
    if written != value:
        raise AmountNotRepresentable(f"{value} {currency.upper()} has more than {places} decimals")
    return f"{written:f}"


def price_text(minor_units: Decimal, currency: str) -> str:
    """A unit price (BT-146), which may carry more decimals than an amount."""
    value = (minor_units.scaleb(-currency_exponent(currency.lower()))).normalize()
    places = max(0, -value.as_tuple().exponent)  # type: ignore[operator]
    if places > 6:
        value = value.quantize(Decimal("0.000001"))
    return f"{value:f}"


def percent_text(rate: Decimal) -> str:
    value = rate.normalize()
    return f"{value:f}" if value != value.to_integral() else f"{value.to_integral():f}"
