"""The billing run: invoices created per second for due subscriptions, each period created,
finalized and its charge and PDF jobs recorded, a chunk of subscriptions per transaction,
against a bare SQL scan of the same due rows measured in the same run. Last line: the ratio
run/scan (for the record; the target is the run's rate: at least 200 invoices/s).

    python bench/billing_run.py [--subscriptions 5000] [--batch 500]

The subscriptions (one price, a customer per ten) are seeded straight in PostgreSQL, due
an hour ago. The run is the service's own `run_billing()`, in this process, with the job
publisher stubbed: jobs are recorded in the outbox but not published (the broker is not
what is measured). Uses DATABASE_URL or the machine's PostgreSQL, else an embedded one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack, closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench._support import NoBroker, connect, migrated_database  # noqa: E402

STATE = ROOT / ".devstack" / "bench"
SCAN_REPEATS = 5


def _seed(url: str, count: int) -> None:
    """`count` monthly subscriptions whose first period ended an hour ago, in plain SQL."""
    with closing(connect(url, autocommit=False)) as connection, connection.cursor() as cur:
        cur.execute(
            "INSERT INTO prices (id, product, unit_amount, currency, interval) "
            "VALUES ('prc_bench', 'Team plan', 1250, 'eur', 'month')"
        )
        cur.execute(
            "INSERT INTO customers (id, name, email, currency) "
            "SELECT 'cus_bench' || lpad(i::text, 8, '0'), 'Bench customer ' || i, "
            "'billing' || i || '@bench.example', 'eur' "
            "FROM generate_series(0, %s) AS i",
            ((count - 1) // 10,),
        )
        cur.execute(
            "WITH anchor AS (SELECT date_trunc('second', now()) - interval '1 month 1 hour' AS at) "
            "INSERT INTO subscriptions (id, customer_id, price_id, quantity, collection_method, "
            "billing_cycle_anchor, current_period_index, current_period_start, "
            "current_period_end) "
            "SELECT 'sub_bench' || lpad(i::text, 8, '0'), "
            "'cus_bench' || lpad((i / 10)::text, 8, '0'), 'prc_bench', 1 + i %% 5, "
            "CASE WHEN i %% 4 = 0 THEN 'send_invoice' ELSE 'charge_automatically' END, "
            "anchor.at, 0, anchor.at, anchor.at + interval '1 month' "
            "FROM generate_series(0, %s) AS i, anchor",
            (count - 1,),
        )
        connection.commit()
        cur.execute("ANALYZE")
        connection.commit()


def _scan_rate(url: str) -> tuple[float, int]:
    """The bare SQL scan of the due rows: rows per second fetched by the client (best of
    SCAN_REPEATS), and how many rows it saw."""
    best = 0.0
    rows = 0
    with closing(connect(url)) as connection, connection.cursor() as cur:
        for _ in range(SCAN_REPEATS):
            started = time.perf_counter()
            cur.execute(
                "SELECT id, customer_id, price_id, quantity, current_period_end "
                "FROM subscriptions WHERE current_period_end <= now()"
            )
            rows = len(cur.fetchall())
            best = max(best, rows / (time.perf_counter() - started))
    return best, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscriptions", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)

    scratch = ExitStack()
    database_url = scratch.enter_context(migrated_database(STATE))
    try:
        from billing import create_app
        from billing.subscriptions import subscriptions

        _seed(database_url, args.subscriptions)
        scan, scanned = _scan_rate(database_url)
        assert scanned == args.subscriptions, f"the scan saw {scanned} rows"

        app = create_app(
            {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
            publisher=NoBroker(),
        )
        subscriptions.RUN_BATCH = args.batch
        with app.app_context():
            started = time.perf_counter()
            result = subscriptions.run_billing()
            elapsed = time.perf_counter() - started
            from sqlalchemy import func, select

            from billing.extensions import db
            from billing.models import Invoice, OutboxJob

            invoices = db.session.scalar(select(func.count()).select_from(Invoice))
            jobs = db.session.scalar(select(func.count()).select_from(OutboxJob))
            db.session.remove()
            db.engine.dispose()
        assert result.failures == 0, f"{result.failures} subscriptions failed"
        assert invoices == result.invoices_created == args.subscriptions, (
            f"{invoices} invoices for {args.subscriptions} due subscriptions"
        )
        rate = result.invoices_created / elapsed
        print(
            f"bare SQL scan of the due subscriptions: {scan:,.0f} rows/s "
            f"({scanned} rows, best of {SCAN_REPEATS})"
        )
        print(
            f"billing run (lock, keyset batches of {args.batch}, a chunk of subscriptions per "
            f"transaction: invoices, lines, numbers, charge/PDF jobs): {rate:,.0f} invoices/s "
            f"({result.invoices_created} invoices, {jobs} jobs recorded, {elapsed:.1f} s)"
        )
        print(f"target: at least 200 invoices/s: {'met' if rate >= 200 else 'NOT met'}")
        print(f"ratio run/scan: {rate / scan:.4f}")
        return 0
    finally:
        scratch.close()


if __name__ == "__main__":
    sys.exit(main())
