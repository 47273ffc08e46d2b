"""Subscription rules: billing periods in calendar steps and proration to the day.

Periods. A subscription bills in advance, period after period, from its billing cycle
anchor. Period n (n = 0, 1, ...) starts `n` steps after the anchor, a step being one
calendar month or one calendar year, at the anchor's time of day. The anchor's day of the
month is kept where the month has it and clamped to the month's last day where it does
not, each period computed from the anchor (never from the previous period), as Stripe
does: an anchor on 31 January gives 28 (or 29) February, 31 March, 30 April, 31 May; an
anchor on 29 February gives 28 February in the next years and 29 February again in a
leap year.

Proration. A change of quantity or price mid-period credits the unused part of the old
plan and charges the remaining part of the new one, both counted in whole days:
``remaining_days`` runs from the change's UTC date (that day included) to the period's
end date, ``days_in_period`` from the period's start date to its end date. Each amount is
``unit_amount * quantity * remaining_days / days_in_period`` in the currency's minor units,
rounded to a whole minor unit, halves away from zero, computed in integers only (no
float, no Decimal), so that EUR cents and JPY yen follow the same rule.
"""

from __future__ import annotations

import calendar
import enum
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from billing.domain.states import IllegalTransition, StateMachine

# The largest amount one line may carry (the invoice rules' bound).
from billing.invoicing.rules import MAX_AMOUNT, AmountTooLarge


class Interval(enum.StrEnum):
    MONTH = "month"
    YEAR = "year"

    @property
    def months(self) -> int:
        return 1 if self is Interval.MONTH else 12


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELED = "canceled"
    TRIALING = "trialing"


# A trial becomes active when its first paid period is invoiced, at the trial's end, or is
# canceled first (nothing charged). Canceled at once, or at the end of the period it was
# set to end with; never resumed.
TRANSITIONS: dict[SubscriptionStatus, frozenset[SubscriptionStatus]] = {
    SubscriptionStatus.ACTIVE: frozenset({SubscriptionStatus.CANCELED}),
    SubscriptionStatus.CANCELED: frozenset(),
    SubscriptionStatus.TRIALING: frozenset(
        {SubscriptionStatus.ACTIVE, SubscriptionStatus.CANCELED}
    ),
}
# The statuses the billing run looks at: a period (or a trial) that ended is followed by
# the next period's invoice.
BILLABLE = (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)
# The index of the trial as a period: the first paid period (index 0) follows it, and is
# anchored on the trial's end.
TRIAL_PERIOD_INDEX = -1
# Stripe's own bound on a trial: two years.
MAX_TRIAL_DAYS = 730


class IllegalSubscriptionTransition(IllegalTransition):
    subject = "a subscription"


MACHINE = StateMachine(SubscriptionStatus, TRANSITIONS, IllegalSubscriptionTransition)


def require_transition(current: str, target: SubscriptionStatus) -> SubscriptionStatus:
    """`target`, if a subscription in `current` may become it; IllegalSubscriptionTransition
    if not."""
    return MACHINE.require(current, target)


def may_become(current: str, target: SubscriptionStatus) -> bool:
    return MACHINE.allows(current, target)


def trial_will_end_due(trial_end: datetime, now: datetime, notice_days: int) -> bool:
    """Whether the notice of a trial ending at `trial_end` is due at `now`: within
    `notice_days` of its end and before it (a trial shorter than the notice gets it at
    once, as Stripe sends it)."""
    return now < trial_end <= now + timedelta(days=notice_days)


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole calendar months, its day clamped to the target month's
    last day (Jan 31 + 1 month = Feb 28 or 29), its time of day and zone kept."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def period_start(anchor: datetime, interval: Interval, index: int) -> datetime:
    """Start of period `index` (0 is the first); the end of a period is the next's start."""
    if index < 0:
        raise ValueError("period indexes start at 0")
    return add_months(anchor, interval.months * index)


@dataclass(frozen=True)
class Period:
    index: int
    start: datetime
    end: datetime


def period(anchor: datetime, interval: Interval, index: int) -> Period:
    return Period(
        index=index,
        start=period_start(anchor, interval, index),
        end=period_start(anchor, interval, index + 1),
    )


def period_amount(unit_amount: int, quantity: int) -> int:
    """A whole period's charge: unit_amount x quantity, bounded like any invoice line."""
    if unit_amount < 0 or quantity < 1:
        raise ValueError("a price is not negative and a quantity at least 1")
    amount = unit_amount * quantity
    if amount > MAX_AMOUNT:
        raise AmountTooLarge(f"a period's amount cannot exceed {MAX_AMOUNT} minor units")
    return amount


def days_left(period_start: datetime, period_end: datetime, at: datetime) -> tuple[int, int]:
    """(remaining_days, days_in_period) of a change at `at`, in whole UTC days: the day of
    the change counts as remaining. Before the period: all of it; after its end: none."""
    total = (period_end.date() - period_start.date()).days
    remaining = (period_end.date() - at.date()).days
    return max(0, min(total, remaining)), total


def prorate(
    unit_amount: int, quantity: int, remaining_days: int, days_in_period: int, *, step: int = 1
) -> int:
    """round_half_up(unit_amount * quantity * remaining_days / days_in_period), in integers.

    The rule: the exact share of the period's amount for the remaining days, rounded to a
    whole minor unit of the currency, halves away from zero (0.5 cent -> 1 cent; in JPY
    0.5 yen -> 1 yen). Amounts are never negative here; the credit for unused time is this
    amount with its sign flipped by the caller, so that credit and charge round alike and
    an unchanged plan nets to exactly zero."""
    if days_in_period <= 0:
        raise ValueError("a period lasts at least one day")
    if not 0 <= remaining_days <= days_in_period:
        raise ValueError("remaining_days lies within the period")
    numerator = period_amount(unit_amount, quantity) * remaining_days
    # In units of the currency's charge step (money.charge_step: tens of fils for KWD), so
    # the prorated line is one Stripe can charge.
    denominator = days_in_period * step
    # floor((2n + d) / 2d) == round half up of n/d for n >= 0, d > 0.
    return (2 * numerator + denominator) // (2 * denominator) * step


@dataclass(frozen=True)
class Proration:
    """What a mid-period change adds to the next invoice: a credit (<= 0) for the old plan's
    unused days and a charge (>= 0) for the new plan's remaining days."""

    credit: int
    charge: int
    remaining_days: int
    days_in_period: int


def prorate_change(
    *,
    old_unit_amount: int,
    old_quantity: int,
    new_unit_amount: int,
    new_quantity: int,
    period_start: datetime,
    period_end: datetime,
    at: datetime,
    step: int = 1,
) -> Proration:
    remaining, total = days_left(period_start, period_end, at)
    return Proration(
        credit=-prorate(old_unit_amount, old_quantity, remaining, total, step=step),
        charge=prorate(new_unit_amount, new_quantity, remaining, total, step=step),
        remaining_days=remaining,
        days_in_period=total,
    )


def describe_period(start: datetime, end: datetime) -> str:
    """ "1 Mar 2026 to 1 Apr 2026": the period on invoice lines (dates in UTC)."""
    return f"{_day(start.date())} to {_day(end.date())}"


def _day(value: date) -> str:
    return f"{value.day} {calendar.month_abbr[value.month]} {value.year}"


def describe_day(moment: datetime) -> str:
    return _day(moment.date())
