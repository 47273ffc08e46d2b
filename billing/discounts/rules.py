"""Coupon and discount rules. Pure."""

from __future__ import annotations

import enum


class CouponDuration(enum.StrEnum):
    # The next invoice only.
    ONCE = "once"
    # Every invoice for `duration_in_months` months from the discount's start.
    REPEATING = "repeating"
    FOREVER = "forever"
