"""Money in integer minor units of an ISO 4217 currency."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from babel.numbers import get_currency_precision, list_currencies


class UnknownCurrency(ValueError):
    pass


class CurrencyMismatch(ValueError):
    pass


@lru_cache(maxsize=1)
def known_currencies() -> frozenset[str]:
    # Babel's CLDR data is the list of ISO 4217 codes in use, with their exponents.
    return frozenset(code.lower() for code in list_currencies())


def normalize_currency(code: str) -> str:
    """Lower-case ISO code, as Stripe spells it; raises UnknownCurrency for anything else."""
    normalized = code.strip().lower()
    if len(normalized) != 3 or normalized not in known_currencies():
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency code")
    return normalized


def currency_exponent(code: str) -> int:
    """Digits after the decimal point: 2 for EUR, 0 for JPY, 3 for KWD."""
    return int(get_currency_precision(normalize_currency(code).upper()))


@dataclass(frozen=True, order=True)
class Money:
    amount: int  # minor units: cents for EUR, yen for JPY
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "currency", normalize_currency(self.currency))
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise TypeError("Money.amount is an integer number of minor units")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def as_decimal(self) -> Decimal:
        """The amount in major units, for display only; never compute with it."""
        return Decimal(self.amount).scaleb(-currency_exponent(self.currency))


def round_half_up(value: Decimal) -> int:
    """Round to a whole minor unit, halves away from zero (the rule tax authorities expect)."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_money(amount: int, currency: str, locale: str) -> str:
    """`amount` minor units as the customer's locale writes money: "1.234,56 €" in de_DE,
    "¥1,235" in ja_JP; the currency's own exponent decides the digits."""
    from babel.numbers import format_currency

    value = Money(amount, currency)
    return str(
        format_currency(
            value.as_decimal(), value.currency.upper(), locale=locale, currency_digits=True
        )
    )
