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
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAP, PACE = 25, 20  # as in the test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscriptions", type=int, default=5_000)
    args = parser.parse_args()
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "tests/e2e/test_stripe_rate_limits.py",
        ],
        cwd=ROOT,
        env={**os.environ, "BILLING_RATE_LIMIT_SUBSCRIPTIONS": str(args.subscriptions)},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    summary = re.search(r"rate limits: .*", result.stdout)
    print(summary.group(0) if summary else result.stdout[-3000:])
    print(f"wall time: {elapsed:.0f} s (exit {result.returncode})")
    busiest = re.search(r"at most (\d+) in one second", summary.group(0) if summary else "")
    took = re.search(r"charged once in (\d+) s", summary.group(0) if summary else "")
    if result.returncode or not busiest or not took:
        print("busiest second / cap: failed")
        return result.returncode or 1
    floor = args.subscriptions / PACE
    print(
        f"busiest second / cap: {int(busiest.group(1)) / CAP:.2f}; "
        f"run / pace floor: {int(took.group(1)) / floor:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
