"""The nightly dunning run over 10,000 and 100,000 open invoices, against a bare SQL scan.

Seeded directly in PostgreSQL with plain SQL (generate_series): customers with a card on
file, open invoices (half charged automatically, with their failed first charge and the
dunning steps of the nights before already recorded; half sent for manual payment, their
due dates spread around tonight), so that tonight about a third of them have a step due:
a retry (a charge attempt and its job), a reminder (an email and its job), or a step
skipped. Then, in this process (jobs recorded, nothing published):
  * baseline: one plain SELECT over the same open invoices with their customers, fetched;
  * service: `dunning.run_dunning`: keyset pages, the schedule, locks, ledger entries and
    every step's effect, committed.
RSS is sampled while the run goes (start, middle, end, peak). The last line is the ratio
run time / scan time at 100,000.

    python bench/dunning.py [--invoices 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from contextlib import ExitStack
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench._support import NoBroker, migrated_database  # noqa: E402

STATE = ROOT / ".devstack" / "bench"
TODAY = date(2026, 6, 15)
INVOICES_PER_CUSTOMER = 10

SEED = """
TRUNCATE dunning_steps, email_deliveries, charge_attempts, invoice_lines, invoices,
         customers, ledger_entries, outbox_jobs RESTART IDENTITY CASCADE;
INSERT INTO customers (id, name, email, currency, stripe_customer_id, default_payment_method)
SELECT 'cus_b' || lpad(c::text, 9, '0'), 'Customer ' || c, 'c' || c || '@bench.example', 'eur',
       'cus_stripe_' || c, 'pm_bench_' || c
FROM generate_series(1, :customers) AS c;
-- Odd: charged automatically, dunning started 0 to 7 nights ago. Even: sent, due
-- between 10 days ahead and 7 days ago.
INSERT INTO invoices (id, customer_id, status, number, currency, collection_method,
                      due_date, dunning_started_on, subtotal, total, finalized_at)
SELECT 'in_b' || lpad(i::text, 10, '0'),
       'cus_b' || lpad((1 + (i - 1) / :per_customer)::text, 9, '0'),
       'open', 'BENCH-' || i, 'eur',
       CASE WHEN i % 2 = 1 THEN 'charge_automatically' ELSE 'send_invoice' END,
       CASE WHEN i % 2 = 0 THEN CAST(:today AS date) + (10 - (i / 2) % 18) END,
       CASE WHEN i % 2 = 1 THEN CAST(:today AS date) - ((i / 2) % 8) END,
       5000, 5000, now()
FROM generate_series(1, :invoices) AS i;
INSERT INTO charge_attempts (id, invoice_id, ledger_key, status, source, amount, currency,
                             payment_method, decline_code, finished_at)
SELECT 'ca_b' || substr(id, 5), id, 'charge:b' || id, 'failed', 'automatic', 5000, 'eur',
       'pm_bench_' || substr(customer_id, 6)::int, 'card_declined', now()
FROM invoices WHERE collection_method = 'charge_automatically';
-- The steps of the nights before, as the run recorded them.
INSERT INTO dunning_steps (invoice_id, step, action, status, reason, taken_on)
SELECT i.id, 'retry:' || d, 'retry_charge', 'done', 'seeded', i.dunning_started_on + d
FROM invoices i, unnest(ARRAY[3, 5, 7]) AS d
WHERE i.collection_method = 'charge_automatically' AND i.dunning_started_on + d < :today;
INSERT INTO dunning_steps (invoice_id, step, action, status, reason, taken_on)
SELECT i.id, 'reminder:' || CASE WHEN d >= 0 THEN '+' ELSE '' END || d, 'send_reminder',
       'done', 'seeded', i.due_date + d
FROM invoices i, unnest(ARRAY[-3, 0, 3, 7]) AS d
WHERE i.collection_method = 'send_invoice' AND i.due_date + d < :today;
ANALYZE;
"""

SCAN = """
SELECT i.id, i.collection_method, i.status, i.due_date, i.dunning_started_on,
       c.default_payment_method
FROM invoices i JOIN customers c ON c.id = i.customer_id
WHERE i.status = 'open' ORDER BY i.id
"""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.perf_counter(), rss_mb()))
            time.sleep(0.05)

    def finish(self) -> list[float]:
        self._done.set()
        self.join()
        self.samples.append((time.perf_counter(), rss_mb()))
        start, end = self.samples[0][0], self.samples[-1][0]
        middle = min(self.samples, key=lambda s: abs(s[0] - (start + end) / 2))
        peak = max(rss for _, rss in self.samples)
        return [self.samples[0][1], middle[1], self.samples[-1][1], peak]


def measure(invoices: int) -> tuple[float, float, dict[str, int], list[float]]:
    from billing.dunning import dunning
    from billing.extensions import db
    from billing.platform import clock

    session = db.session()
    session.execute(
        text(SEED),
        {
            "customers": invoices // INVOICES_PER_CUSTOMER,
            "invoices": invoices,
            "per_customer": INVOICES_PER_CUSTOMER,
            "today": TODAY,
        },
    )
    session.commit()

    started = time.perf_counter()
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(SCAN)
        scanned = len(cursor.fetchall())
        connection.rollback()
    finally:
        connection.close()
    scan = time.perf_counter() - started
    assert scanned == invoices

    sampler = RssSampler()
    sampler.start()
    clock.set_now(datetime(TODAY.year, TODAY.month, TODAY.day, 3, tzinfo=UTC))
    try:
        started = time.perf_counter()
        run = dunning.run_dunning()
        elapsed = time.perf_counter() - started
    finally:
        clock.reset()
    rss = sampler.finish()
    assert run is not None and run.invoices_seen == invoices
    return elapsed, scan, dict(run.steps), rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invoices", type=int, default=100_000)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    scratch = ExitStack()
    database_url = scratch.enter_context(migrated_database(STATE))
    try:
        from billing import create_app

        app = create_app(
            {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
            publisher=NoBroker(),
        )
        results = {}
        with app.app_context():
            for size in (args.invoices // 10, args.invoices):
                results[size] = measure(size)
                elapsed, scan, steps, rss = results[size]
                print(
                    f"{size:>7,} open invoices: run {elapsed:6.2f} s, bare scan {scan:5.2f} s; "
                    f"steps {sum(steps.values()):,} {steps}"
                )
                print(
                    f"        RSS MB start {rss[0]:.0f}, middle {rss[1]:.0f}, end {rss[2]:.0f}, "
                    f"peak {rss[3]:.0f}"
                )
            from billing.extensions import db

            db.session.remove()
            db.engine.dispose()
        small, large = results[args.invoices // 10], results[args.invoices]
        print(
            f"growth x10 invoices: run x{large[0] / small[0]:.1f}, "
            f"RSS growth during run {small[3][3] - small[3][0]:.0f} MB -> "
            f"{large[3][3] - large[3][0]:.0f} MB"
        )
        print(f"ratio run/scan at {args.invoices:,}: {large[0] / large[1]:.1f}")
        return 0
    finally:
        scratch.close()


if __name__ == "__main__":
    sys.exit(main())
