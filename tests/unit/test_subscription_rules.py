from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.subscriptions.rules import (
    TRIAL_PERIOD_INDEX,
    IllegalSubscriptionTransition,
    Interval,
    SubscriptionStatus,
    add_months,
    days_left,
    may_become,
    period,
    prorate,
    prorate_change,
    require_transition,
    trial_will_end_due,
)


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def test_a_month_anchored_on_the_31st_ends_on_the_last_day_of_short_months_and_comes_back():
    anchor = at(2026, 1, 31, 9)
    starts = [period(anchor, Interval.MONTH, n).start for n in range(5)]
    assert starts == [at(2026, 1, 31, 9), at(2026, 2, 28, 9), at(2026, 3, 31, 9),
                      at(2026, 4, 30, 9), at(2026, 5, 31, 9)]  # fmt: skip


def test_a_leap_day_anchor_falls_back_to_the_28th_and_returns_in_the_next_leap_year():
    anchor = at(2028, 2, 29)
    assert [period(anchor, Interval.YEAR, n).start for n in range(5)] == [
        at(2028, 2, 29),
        at(2029, 2, 28),
        at(2030, 2, 28),
        at(2031, 2, 28),
        at(2032, 2, 29),
    ]


def test_a_period_ends_where_the_next_begins():
    anchor = at(2026, 12, 15, 13)
    first, second = period(anchor, Interval.MONTH, 0), period(anchor, Interval.MONTH, 1)
    assert first.end == second.start == at(2027, 1, 15, 13)


def test_months_cross_years_both_ways():
    assert add_months(at(2026, 11, 30), 3) == at(2027, 2, 28)
    assert add_months(at(2026, 3, 31), -1) == at(2026, 2, 28)


def test_the_day_of_the_change_counts_as_remaining():
    assert days_left(at(2026, 3, 1), at(2026, 4, 1), at(2026, 3, 15, 18)) == (17, 31)
    assert days_left(at(2026, 3, 1), at(2026, 4, 1), at(2026, 3, 1)) == (31, 31)
    assert days_left(at(2026, 3, 1), at(2026, 4, 1), at(2026, 4, 2)) == (0, 31)


def test_proration_rounds_halves_up_in_cents():
    # 10.00 EUR x 1 for 1 of 8 days = 1.25 EUR exactly; 5 of 8 days of 0.01 = 0.625 -> 0.01
    assert prorate(1000, 1, 1, 8) == 125
    assert prorate(1, 1, 5, 8) == 1
    assert prorate(1, 1, 4, 8) == 1  # 0.5 rounds up
    assert prorate(1, 1, 3, 8) == 0  # 0.375 rounds down


def test_proration_in_yen_has_no_decimals_to_hide_in():
    # 1,000 JPY x 3 for 10 of 31 days = 967.74... -> 968 yen
    assert prorate(1000, 3, 10, 31) == 968
    # 15 yen for half of a 30-day period = 7.5 -> 8 yen
    assert prorate(15, 1, 15, 30) == 8


def test_a_change_to_the_same_plan_nets_to_zero_and_an_upgrade_to_the_difference():
    same = prorate_change(
        old_unit_amount=999, old_quantity=3, new_unit_amount=999, new_quantity=3,
        period_start=at(2026, 3, 1), period_end=at(2026, 4, 1), at=at(2026, 3, 20),
    )  # fmt: skip
    assert same.credit + same.charge == 0
    upgrade = prorate_change(
        old_unit_amount=1000, old_quantity=2, new_unit_amount=1000, new_quantity=5,
        period_start=at(2026, 4, 1), period_end=at(2026, 5, 1), at=at(2026, 4, 16),
    )  # fmt: skip
    # 15 of 30 days: -1000 for the two seats, +2500 for the five.
    assert (upgrade.credit, upgrade.charge) == (-1000, 2500)


def test_proration_rejects_days_outside_the_period():
    with pytest.raises(ValueError):
        prorate(100, 1, 31, 30)
    with pytest.raises(ValueError):
        prorate(100, 1, 1, 0)


@given(
    unit_amount=st.integers(0, 10**9),
    quantity=st.integers(1, 1000),
    days=st.integers(1, 366),
    data=st.data(),
)
def test_proration_is_the_exact_share_rounded_half_up(unit_amount, quantity, days, data):
    remaining = data.draw(st.integers(0, days))
    exact = Fraction(unit_amount * quantity * remaining, days)
    result = prorate(unit_amount, quantity, remaining, days)
    assert exact - Fraction(1, 2) < result <= exact + Fraction(1, 2)
    if exact - int(exact) == Fraction(1, 2):
        assert result == int(exact) + 1
    assert 0 <= result <= unit_amount * quantity


@given(
    anchor=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
    months=st.integers(0, 120),
)
def test_every_period_starts_on_the_anchor_day_or_its_months_last_day(anchor, months):
    anchor = anchor.replace(tzinfo=UTC)
    moved = add_months(anchor, months)
    assert moved.time() == anchor.time()
    last_of_month = (moved + timedelta(days=1)).month != moved.month
    assert moved.day == anchor.day or (moved.day < anchor.day and last_of_month)


def test_a_trial_becomes_active_or_canceled_and_never_comes_back():
    assert require_transition("trialing", SubscriptionStatus.ACTIVE) is SubscriptionStatus.ACTIVE
    assert may_become("trialing", SubscriptionStatus.CANCELED)
    for status in ("active", "canceled"):
        assert not may_become(status, SubscriptionStatus.TRIALING)
    with pytest.raises(IllegalSubscriptionTransition):
        require_transition("canceled", SubscriptionStatus.ACTIVE)


def test_the_first_paid_period_after_a_trial_starts_at_the_trial_s_end():
    trial_end = at(2026, 2, 14, 9)
    first = period(trial_end, Interval.MONTH, TRIAL_PERIOD_INDEX + 1)
    assert (first.index, first.start, first.end) == (0, trial_end, at(2026, 3, 14, 9))


def test_the_trial_will_end_notice_is_due_within_its_days_before_the_end_and_not_after():
    end = at(2026, 2, 14, 9)
    assert not trial_will_end_due(end, at(2026, 2, 11, 8), 3)  # an hour too early
    assert trial_will_end_due(end, at(2026, 2, 11, 9), 3)
    assert trial_will_end_due(end, at(2026, 2, 14, 8), 3)
    assert not trial_will_end_due(end, at(2026, 2, 14, 9), 3)  # over: it is being invoiced
    # A trial shorter than the notice is told at once.
    assert trial_will_end_due(at(2026, 2, 2), at(2026, 2, 1), 3)
