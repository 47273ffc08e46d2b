"""Money in integer minor units of a currency Stripe can charge, and the conversion of those
amounts into the unit Stripe's API expects.

Where the rules come from: Stripe's "Supported currencies" page,
https://docs.stripe.com/currencies, its sections "Supported presentment currencies",
"Zero-decimal currencies", "Three-decimal currencies" and "Special cases". Each list below
is one of those sections; re-read them when Stripe announces a change to a currency.

Our minor unit is the ISO 4217 one as CLDR uses it (cents; yen; fils for KWD; whole krónur
for ISK), pinned in the table below so that a Babel upgrade can never change what a stored
amount means. Stripe's `amount` unit differs from it for some currencies, and Stripe can
charge some amounts less finely than our unit counts; the rules for both are here, and each
is applied in one place:

- **Conversion at the Stripe boundary.** `to_stripe_amount` multiplies by a power of ten
  (ISK: our 5 krónur are Stripe's 500), exactly; every amount the Stripe adapter sends goes
  through it, and every amount it reads back through `from_stripe_amount`. It never rounds:
  an amount Stripe cannot take raises before anything is sent.
- **Rounding in the invoice rules.** Where Stripe cannot charge every one of our minor units
  (three-decimal currencies: only whole tens of fils), `charge_step` says by how much amounts
  must move: taxes and prorations round to it and line, price and refund amounts must be
  multiples of it, so an invoice's total is chargeable exactly as it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from babel.numbers import get_currency_precision, list_currencies


class UnknownCurrency(ValueError):
    pass


class UnsupportedCurrency(UnknownCurrency):
    """An ISO 4217 code Stripe cannot charge (test and precious-metal codes, retired ones)."""


class CurrencyMismatch(ValueError):
    pass


class AmountNotChargeable(ValueError):
    """An amount Stripe cannot charge in its currency (a three-decimal amount not in tens)."""


@dataclass(frozen=True)
class StripeCurrency:
    """One presentment currency: our minor unit, Stripe's, and what Stripe accepts."""

    exponent: int  # digits after the point of our minor unit (what invoices and the API use)
    stripe_exponent: int  # digits after the point of Stripe's `amount`
    stripe_multiple: int = 1  # Stripe's `amount` must be a multiple of this

    @property
    def factor(self) -> int:
        """Stripe units per one of ours."""
        return int(10 ** (self.stripe_exponent - self.exponent))

    @property
    def charge_step(self) -> int:
        """The smallest amount Stripe can charge, in our minor units."""
        return max(1, self.stripe_multiple // self.factor)


# "Supported presentment currencies" (card payments), as listed on the page.
_PRESENTMENT = (
    "usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bif bmd bnd bob brl bsd bwp "
    "byn bzd cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel "
    "gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr isk jmd jpy kes kgs khr kmf krw kyd kzt "
    "lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok "
    "npr nzd pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek sgd shp sle sos "
    "srd std szl thb tjs top try ttd twd tzs uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer "
    "zar zmw"
).split()
# "Zero-decimal currencies": Stripe's amount is in whole units. UGX is listed there too, but
# its special case below overrides it.
_ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf vnd vuv xaf xof xpf".split())
# "Three-decimal currencies": supported by PaymentIntents and Refunds, but "the
# least-significant (last) digit [must] be 0": Stripe charges them in tens of fils. The
# presentment list does not name them; this section says they can be charged.
_THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
# "Special cases", ISK and UGX: effectively zero-decimal (no fractions can be charged), but
# "to maintain backwards compatibility, you must pass in amounts with two decimals": 5 ISK is
# `amount=500`, and the amount must be divisible by 100. HUF and TWD, the other special cases,
# are zero-decimal for payouts only; charges take two decimals, so they need nothing here.
_TWO_DECIMALS_IN_WHOLE_UNITS = frozenset({"isk", "ugx"})
# Two-decimal on Stripe, but without minor units in CLDR (and so in our API, as for ISK):
# our whole units are sent as Stripe's hundredths.
_WHOLE_UNITS_ON_A_TWO_DECIMAL_STRIPE = frozenset("afn all lak lbp mmk rsd sos std yer".split())


def _rule(code: str) -> StripeCurrency:
    if code in _ZERO_DECIMAL:
        return StripeCurrency(exponent=0, stripe_exponent=0)
    if code in _THREE_DECIMAL:
        return StripeCurrency(exponent=3, stripe_exponent=3, stripe_multiple=10)
    if code in _TWO_DECIMALS_IN_WHOLE_UNITS:
        return StripeCurrency(exponent=0, stripe_exponent=2, stripe_multiple=100)
    if code in _WHOLE_UNITS_ON_A_TWO_DECIMAL_STRIPE:
        return StripeCurrency(exponent=0, stripe_exponent=2)
    return StripeCurrency(exponent=2, stripe_exponent=2)


STRIPE_CURRENCIES: dict[str, StripeCurrency] = {
    code: _rule(code) for code in sorted({*_PRESENTMENT, *_THREE_DECIMAL})
}


@lru_cache(maxsize=1)
def iso_currencies() -> frozenset[str]:
    # Babel's CLDR data is the list of ISO 4217 codes, for telling a typo from a currency
    # Stripe does not take, and for showing amounts of rows older than this table.
    return frozenset(code.lower() for code in list_currencies())


def known_currencies() -> frozenset[str]:
    """Every currency an invoice may be in: the ones Stripe can charge."""
    return frozenset(STRIPE_CURRENCIES)


def normalize_currency(code: str) -> str:
    """Lower-case ISO code, as Stripe spells it, of a currency Stripe can charge; raises
    UnsupportedCurrency for an ISO code Stripe does not take, UnknownCurrency for the rest."""
    normalized = code.strip().lower()
    if normalized in STRIPE_CURRENCIES:
        return normalized
    if len(normalized) == 3 and normalized in iso_currencies():
        raise UnsupportedCurrency(f"Stripe cannot charge in {normalized.upper()}")
    raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency code")


def stripe_currency(code: str) -> StripeCurrency:
    return STRIPE_CURRENCIES[normalize_currency(code)]


def currency_exponent(code: str) -> int:
    """Digits after the decimal point of our minor unit: 2 for EUR, 0 for JPY and ISK, 3 for
    KWD. A currency outside Stripe's list (only in rows older than the list) keeps CLDR's."""
    normalized = code.strip().lower()
    if normalized in STRIPE_CURRENCIES:
        return STRIPE_CURRENCIES[normalized].exponent
    return int(get_currency_precision(_iso_code(code).upper()))


def charge_step(code: str) -> int:
    """The smallest amount Stripe can charge, in our minor units: 10 for KWD, else 1 (also
    for a currency of a row older than the table, which the Stripe boundary refuses)."""
    rule = STRIPE_CURRENCIES.get(code.strip().lower())
    return 1 if rule is None else rule.charge_step


def to_stripe_amount(amount: int, currency: str) -> int:
    """`amount` of our minor units as Stripe's `amount` for `currency`: exact, never
    rounded; AmountNotChargeable when Stripe would refuse it."""
    rule = stripe_currency(currency)
    converted = amount * rule.factor
    if converted % rule.stripe_multiple:
        raise AmountNotChargeable(
            f"{amount} is not an amount Stripe can charge in {currency.upper()}: it takes "
            f"multiples of {rule.charge_step} of its minor unit"
        )
    return converted


def from_stripe_amount(stripe_amount: int, currency: str) -> int:
    """Stripe's `amount` (never negative) in our minor units, rounded down if it holds a
    fraction of ours, which it never should: where exactness matters, compare in Stripe's
    units with `to_stripe_amount`. A currency outside the table is taken as is."""
    rule = STRIPE_CURRENCIES.get(currency.strip().lower())
    return stripe_amount if rule is None else stripe_amount // rule.factor


def round_to_step(value: Decimal, step: int) -> int:
    """Round to a whole multiple of `step` minor units, halves away from zero."""
    return round_half_up(value / step) * step


def _iso_code(code: str) -> str:
    normalized = code.strip().lower()
    if len(normalized) != 3 or normalized not in iso_currencies():
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency code")
    return normalized


@dataclass(frozen=True, order=True)
class Money:
    amount: int  # minor units: cents for EUR, yen for JPY
    currency: str

    def __post_init__(self) -> None:
        # Any ISO code: an amount of a row older than Stripe's list must still show.
        object.__setattr__(self, "currency", _iso_code(self.currency))
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
