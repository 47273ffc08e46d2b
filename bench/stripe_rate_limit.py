"""A billing run of 5,000 subscriptions against a Stripe capped at 25 requests a second,
which also answers 429 to one request in twenty (tests/e2e/test_stripe_rate_limits.py,
with more subscriptions): every invoice charged once, no job given up, and the busiest
second of requests that came to "Stripe", refused ones included.

    python bench/stripe_rate_limit.py [--subscriptions 5000]

The baseline is Stripe's cap itself. Last line: the busiest second over the cap (must be
at most 1.00), and how long the run took against the pace's own floor (subscriptions /
pace).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._support import run_e2e_test  # noqa: E402

CAP, PACE = 25, 20  # as in the test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscriptions", type=int, default=5_000)
    args = parser.parse_args()
    returncode, summary, elapsed = run_e2e_test(
        ROOT,
        "tests/e2e/test_stripe_rate_limits.py",
        {"BILLING_RATE_LIMIT_SUBSCRIPTIONS": str(args.subscriptions)},
    )
    print(summary)
    print(f"wall time: {elapsed:.0f} s (exit {returncode})")
    busiest = re.search(r"at most (\d+) in one second", summary)
    took = re.search(r"charged once in (\d+) s", summary)
    if returncode or not busiest or not took:
        print("busiest second / cap: failed")
        return returncode or 1
    floor = args.subscriptions / PACE
    print(
        f"busiest second / cap: {int(busiest.group(1)) / CAP:.2f}; "
        f"run / pace floor: {int(took.group(1)) / floor:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
