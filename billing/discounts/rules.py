"""Coupon and discount rules. Pure.

A coupon takes a percentage (0 < percent <= 100) or an amount in one currency off, for a
duration: `once` (the next invoice only), `repeating` (every invoice of a period starting
within `duration_in_months` months of the discount's start) or `forever`. A discount is a
coupon applied to a customer, to one of its subscriptions, or to one invoice.

Which discounts an invoice gets (as Stripe does): its own (given when it was created),
plus, for a subscription's invoice, the subscription's discounts, or the customer's when
the subscription has none; a one-off invoice gets the customer's. They apply in the order
they were attached (oldest first); how each is rounded and shared among the lines is the
rule written in `billing.invoicing.rules` (the one place totals are computed).

When a discount ends: a repeating one applies to an invoice whose period starts before
``start + duration_in_months`` (calendar months, as billing periods count them); a `once`
one is used up by the first invoice that takes it, which marks it ended in its own
transaction, with the discount's row locked, so that two invoices cannot both take it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.domain.money import Money, charge_step
from billing.invoicing.rules import DiscountTerms
from billing.subscriptions.rules import add_months

# Percentages carry at most four decimals, as the column does (12.5, 33.3333).
PERCENT_QUANTUM = Decimal("0.0001")
# Ten years of months: longer is `forever` in all but name.
MAX_DURATION_IN_MONTHS = 120


class CouponDuration(enum.StrEnum):
    # The next invoice only.
    ONCE = "once"
    # Every invoice for `duration_in_months` months from the discount's start.
    REPEATING = "repeating"
    FOREVER = "forever"


class CouponInvalid(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class CouponTerms:
    name: str
    duration: CouponDuration
    percent_off: Decimal | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration_in_months: int | None = None
    max_redemptions: int | None = None


def check_coupon(terms: CouponTerms) -> None:
    """CouponInvalid, naming the parameter, for terms the coupons table would refuse or
    an invoice could not charge."""
    if (terms.percent_off is None) == (terms.amount_off is None):
        raise CouponInvalid("give percent_off or amount_off, exactly one", "percent_off")
    if terms.percent_off is not None and not (0 < terms.percent_off <= 100):
        raise CouponInvalid("percent_off must be above 0 and at most 100", "percent_off")
    if terms.amount_off is not None:
        if terms.currency is None:
            raise CouponInvalid("an amount_off coupon needs its currency", "currency")
        if terms.amount_off <= 0:
            raise CouponInvalid("amount_off must be positive", "amount_off")
        step = charge_step(terms.currency)
        if terms.amount_off % step:
            raise CouponInvalid(
                f"amount_off must be a multiple of {step} minor units in this currency",
                "amount_off",
            )
    elif terms.currency is not None:
        raise CouponInvalid("currency goes with amount_off only", "currency")
    repeating = terms.duration is CouponDuration.REPEATING
    if repeating and terms.duration_in_months is None:
        raise CouponInvalid("a repeating coupon needs duration_in_months", "duration_in_months")
    if not repeating and terms.duration_in_months is not None:
        raise CouponInvalid(
            "duration_in_months goes with a repeating duration only", "duration_in_months"
        )
    if terms.max_redemptions is not None and terms.max_redemptions <= 0:
        raise CouponInvalid("max_redemptions must be positive", "max_redemptions")


def describe(
    name: str, percent_off: Decimal | None, amount_off: int | None, currency: str | None
) -> str:
    """The discount line of an invoice: "Spring sale (20% off)", "Welcome (5.00 EUR off)"."""
    if percent_off is not None:
        return f"{name} ({format(percent_off.normalize(), 'f')}% off)"
    assert amount_off is not None and currency is not None
    value = Money(amount_off, currency).as_decimal()
    return f"{name} ({value} {currency.upper()} off)"


def terms_of(percent_off: Decimal | None, amount_off: int | None) -> DiscountTerms:
    return DiscountTerms(percent_off=percent_off, amount_off=amount_off)


def discount_end(start: datetime, duration: CouponDuration, months: int | None) -> datetime | None:
    """The end of a repeating discount: its start plus its months; None for the others."""
    if duration is CouponDuration.REPEATING:
        assert months is not None
        return add_months(start, months)
    return None


def applies_to_period(
    end: datetime | None, ended_at: datetime | None, period_start: datetime
) -> bool:
    """Whether a discount (its `end` if repeating, its `ended_at` if removed or used up)
    applies to an invoice of a period starting at `period_start` (a one-off invoice's
    period starts when it is created)."""
    if ended_at is not None:
        return False
    return end is None or period_start < end


@dataclass(frozen=True)
class Candidate:
    """A discount that might apply, as the selection needs it."""

    id: str
    subscription_id: str | None
    invoice_id: str | None
    end: datetime | None
    ended_at: datetime | None


def select_discounts(
    candidates: list[Candidate],
    *,
    subscription_id: str | None,
    period_start: datetime,
) -> list[str]:
    """The ids of the discounts an invoice gets, in the order they apply (oldest first):
    the invoice's own, plus the subscription's, or the customer's when the subscription
    has none (for a one-off invoice, `subscription_id` is None: the customer's).
    `candidates` are the invoice's own, the customer's (no subscription, no invoice) and,
    for a subscription's invoice, the subscription's."""
    live = [c for c in candidates if applies_to_period(c.end, c.ended_at, period_start)]
    own = [c for c in live if c.invoice_id is not None]
    customers = [c for c in live if c.subscription_id is None and c.invoice_id is None]
    subscriptions = [
        c for c in live if subscription_id is not None and c.subscription_id == subscription_id
    ]
    chosen = own + (subscriptions or customers)
    return sorted(c.id for c in chosen)
