"""The chaos run at scale: 10,000 invoices charged while billing workers are SIGKILLed about
every second (--kill-every), 10% of Stripe's answers are lost, every task is delivered
twice and Redis is flushed once (tests/e2e/test_charging_under_faults.py, with more invoices).

    python bench/chaos.py [--invoices 10000] [--kill-every 1] [--fault-seconds 0]
                          [--429-share 0]

The faults go on while every invoice is created and for --fault-seconds in all at least
(0: just while they are created), so this measures liveness *under* continuous faults:
how many invoices were paid while they lasted, and how long everything took to settle
after they stopped. The test in `make test` asserts a bound on the latter; this prints it.

The baseline is the promise itself: invoices charged exactly once, out of all invoices, as
counted on the emulator's own PaymentIntents. Last line: that ratio (must be 1.00) and the
seconds from the heal until every invoice was paid and every PDF and email delivered.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._support import run_e2e_test  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invoices", type=int, default=10_000)
    parser.add_argument("--kill-every", type=float, default=1.0, help="seconds, about")
    parser.add_argument("--fault-seconds", type=float, default=0.0, help="window, at least")
    parser.add_argument(
        "--429-share", dest="share_429", type=float, default=0.0, help="of Stripe requests"
    )
    args = parser.parse_args()
    returncode, summary, elapsed = run_e2e_test(
        ROOT,
        "tests/e2e/test_charging_under_faults.py::test_chaos_every_invoice_is_paid_exactly_once",
        {
            "BILLING_CHAOS_INVOICES": str(args.invoices),
            "BILLING_CHAOS_KILL_EVERY": str(args.kill_every),
            "BILLING_CHAOS_FAULT_SECONDS": str(args.fault_seconds),
            "BILLING_CHAOS_429_SHARE": str(args.share_429),
            # Measured here, not asserted: a run this size takes what it takes.
            "BILLING_CHAOS_HEAL_BOUND": "7200",
        },
    )
    print(summary)
    print(f"wall time: {elapsed:.0f} s")
    charged_once = args.invoices if returncode == 0 else 0
    settled = re.search(r"delivered (\d+) s after the heal", summary)
    print(
        f"invoices charged exactly once / invoices: {charged_once / args.invoices:.2f}; "
        f"settled {settled.group(1) if settled else '?'} s after healing"
    )
    return returncode


if __name__ == "__main__":
    sys.exit(main())
