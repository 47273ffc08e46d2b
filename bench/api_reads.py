"""Invoice reads over HTTP, against a bare Flask-SQLAlchemy app serving the same rows from
the same database, measured in the same run. Last line: the ratios ours/bare.

    python bench/api_reads.py [--invoices 1000] [--issued-share 0] [--connections 8]
                              [--rounds 3] [--seconds 8] [--load auto|wrk|python]

Seeded straight in PostgreSQL with plain SQL: one customer and its invoices, each with
three lines; by default drafts, as in the issue's measurement (--issued-share makes about
that share of them open and numbered, which adds their emails and documents to what is
read).
Two servers, each gunicorn with 2 workers x 4 threads (gthread), started here:
  * ours: the service as `make run` starts it (its gunicorn.conf.py, INFO logs, an admin
    API key, rate limits counted in Redis but set high enough never to refuse);
  * bare: the Flask-SQLAlchemy app of the Flask guides (`bare_app` below): models of the
    two tables, a view that queries and jsonifies. Its list loads the page's lines with
    `selectinload`, one more statement, as SQLAlchemy's docs teach; one invoice is
    `get_or_404` and its lines as the relationship loads them.
Two reads: GET /v1/invoices/{id} (one invoice) and GET /v1/invoices?limit=100 (a page).
Load comes from wrk when it is on PATH, else from a small Python client (threads, one
keep-alive connection each); the first line says which. Rounds alternate ours, bare, ours,
bare..., each after its own warm-up, so that a slow spell of a shared machine falls on
both. Rate: requests over the summed time of a side's rounds; p50/p99: the median of its
rounds' own. CPU ms per request: the server's process tree over its rounds, less noisy
than the rate when the machine is busy. Statements per request are counted in this
process through the service's own app (Flask test client) on the same rows, less the
PREPARE a prebuilt statement sends once per connection.
Uses DATABASE_URL / REDIS_URL or the machine's servers, else embedded ones.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STATE = ROOT / ".devstack" / "bench"
CUSTOMER = "cus_bench0001"
ADMIN_SECRET = "sk_bill_bench_reads_admin"  # noqa: S105 - a throwaway key of a scratch database
PAGE = 100

# --- the bare app --------------------------------------------------------------------------


class BareBase(DeclarativeBase):
    pass


bare_db = SQLAlchemy(model_class=BareBase)


class BareInvoice(bare_db.Model):  # type: ignore[name-defined]
    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(primary_key=True)
    customer_id: Mapped[str]
    status: Mapped[str]
    number: Mapped[str | None]
    currency: Mapped[str]
    collection_method: Mapped[str]
    days_until_due: Mapped[int | None]
    due_date: Mapped[date | None]
    description: Mapped[str | None]
    subtotal: Mapped[int]
    tax: Mapped[int]
    total: Mapped[int]
    amount_paid: Mapped[int]
    created_at: Mapped[datetime]
    finalized_at: Mapped[datetime | None]

    lines: Mapped[list[BareLine]] = relationship(order_by="BareLine.id")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer": self.customer_id,
            "number": self.number,
            "status": self.status,
            "currency": self.currency,
            "collection_method": self.collection_method,
            "days_until_due": self.days_until_due,
            "due_date": self.due_date.isoformat() if self.due_date else None,
            "description": self.description,
            "lines": [line.to_dict() for line in self.lines],
            "subtotal": self.subtotal,
            "tax": self.tax,
            "total": self.total,
            "amount_paid": self.amount_paid,
            "amount_due": self.total - self.amount_paid,
            "created": int(self.created_at.timestamp()),
            "finalized_at": int(self.finalized_at.timestamp()) if self.finalized_at else None,
        }


class BareLine(bare_db.Model):  # type: ignore[name-defined]
    __tablename__ = "invoice_lines"

    id: Mapped[str] = mapped_column(primary_key=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    description: Mapped[str]
    quantity: Mapped[int]
    unit_amount: Mapped[int]
    tax_rate: Mapped[Decimal]
    amount: Mapped[int]
    tax: Mapped[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "quantity": self.quantity,
            "unit_amount": self.unit_amount,
            "tax_rate": str(self.tax_rate.normalize()),
            "amount": self.amount,
            "tax": self.tax,
        }


def bare_app() -> Flask:
    """What gunicorn serves as the baseline: `bench.api_reads:bare_app()`."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BARE_DATABASE_URL"]
    bare_db.init_app(app)

    @app.get("/v1/invoices/<invoice_id>")
    def one(invoice_id: str) -> Any:
        return jsonify(bare_db.get_or_404(BareInvoice, invoice_id).to_dict())

    @app.get("/v1/invoices")
    def page() -> Any:
        limit = request.args.get("limit", 10, type=int)
        invoices = bare_db.session.scalars(
            bare_db.select(BareInvoice)
            .options(selectinload(BareInvoice.lines))
            .order_by(BareInvoice.id.desc())
            .limit(limit + 1)
        ).all()
        return jsonify(
            {"data": [i.to_dict() for i in invoices[:limit]], "has_more": len(invoices) > limit}
        )

    return app


# --- seeding -------------------------------------------------------------------------------


def seed(url: str, invoices: int, issued_share: float) -> list[str]:
    """One customer, an admin key and `invoices` invoices of three lines each; the ids,
    oldest first. Every 1/issued_share-th invoice is open and numbered, the others drafts."""
    from bench._support import connect
    from billing.access.api_keys import hash_secret

    every = round(1 / issued_share) if issued_share > 0 else 0
    with closing(connect(url, autocommit=False)) as connection, connection.cursor() as cur:
        cur.execute(
            "INSERT INTO customers (id, name, email, currency) "
            "VALUES (%s, 'Bench GmbH', 'billing@bench.example', 'eur')",
            (CUSTOMER,),
        )
        cur.execute(
            "INSERT INTO api_keys (id, name, secret_hash, secret_prefix) "
            "VALUES ('key_bench0001', 'bench', %s, 'sk_bill_benc')",
            (hash_secret(ADMIN_SECRET),),
        )
        # Lines: 3 x 1000 at 19%, 1 x 250 at 7.7%, 2 x 99 at 0%; tax 570 + 19 + 0.
        cur.execute(
            "INSERT INTO invoices (id, customer_id, status, number, currency, collection_method, "
            "due_date, description, subtotal, tax, total, finalized_at) "
            "SELECT 'in_bench' || lpad(i::text, 8, '0'), %(customer)s, "
            "CASE WHEN %(every)s > 0 AND i %% %(every)s = 0 THEN 'open' ELSE 'draft' END, "
            "CASE WHEN %(every)s > 0 AND i %% %(every)s = 0 THEN 'BENCH-' || i END, "
            "'eur', 'send_invoice', "
            "CASE WHEN %(every)s > 0 AND i %% %(every)s = 0 THEN current_date + 30 END, "
            "'Invoice ' || i, 3448, 589, 4037, "
            "CASE WHEN %(every)s > 0 AND i %% %(every)s = 0 THEN now() END "
            "FROM generate_series(1, %(count)s) AS i",
            {"customer": CUSTOMER, "every": every, "count": invoices},
        )
        cur.execute(
            "INSERT INTO invoice_lines (id, invoice_id, description, quantity, unit_amount, "
            "tax_rate, amount, tax) "
            "SELECT 'il_bench' || lpad(i::text, 8, '0') || l, 'in_bench' || lpad(i::text, 8, '0'), "
            "(ARRAY['Seats', 'Support', 'Extra'])[l], (ARRAY[3, 1, 2])[l], "
            "(ARRAY[1000, 250, 99])[l], (ARRAY[19, 7.7, 0])[l], (ARRAY[3000, 250, 198])[l], "
            "(ARRAY[570, 19, 0])[l] "
            "FROM generate_series(1, %s) AS i, generate_series(1, 3) AS l",
            (invoices,),
        )
        connection.commit()
        cur.execute("SELECT id FROM invoices ORDER BY id")
        ids = [row[0] for row in cur.fetchall()]
    with closing(connect(url)) as connection:
        connection.cursor().execute("ANALYZE")
    return ids


def statements_per_request(url: str, redis_url: str, paths: list[str]) -> list[int]:
    """How many statements the service sends for each path (its app, in this process)."""
    from sqlalchemy import event

    from bench._support import NoBroker
    from billing import create_app
    from billing.extensions import db

    app = create_app(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
            "API_RATE_LIMIT": "1000000 per second",
        },
        publisher=NoBroker(),
    )
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    counts = []
    with app.app_context():
        engine = db.engine
    seen = [0]

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("PREPARE "):
            seen[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        for path in paths:
            client.get(path, headers=headers)  # prepared statements, caches
            seen[0] = 0
            response = client.get(path, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: {response.status_code} {response.get_data()[:300]!r}")
            counts.append(seen[0])
    finally:
        event.remove(engine, "before_cursor_execute", count)
        with app.app_context():
            db.engine.dispose()
    return counts


# --- load ----------------------------------------------------------------------------------


@dataclass
class Round:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float = 0.0


@dataclass
class Side:
    rounds: list[Round] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return sum(r.requests for r in self.rounds) / sum(r.seconds for r in self.rounds)

    @property
    def p50(self) -> float:
        return statistics.median(r.p50_ms for r in self.rounds)

    @property
    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.rounds)

    @property
    def cpu_ms(self) -> float:
        return 1000 * sum(r.cpu_seconds for r in self.rounds) / sum(r.requests for r in self.rounds)


_WRK_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("bench: %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_round(url: str, headers: dict[str, str], connections: int, seconds: float) -> Round:
    script = STATE / "api_reads.lua"
    script.write_text(_WRK_SCRIPT)
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    command += ["-s", str(script)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"^bench: (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk said:\n{out}")
    requests, micros, p50, p99, errors = (int(v) for v in found.groups())
    return Round(requests, micros / 1e6, p50 / 1000, p99 / 1000, errors)


def python_round(url: str, headers: dict[str, str], connections: int, seconds: float) -> Round:
    """`connections` threads, each with one keep-alive connection, for `seconds`."""
    target = http.client.urlsplit(url)
    path = target.path + (f"?{target.query}" if target.query else "")
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    start = threading.Barrier(connections + 1)
    deadline = [0.0]

    def run(index: int) -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        mine = latencies[index]
        start.wait()
        while (now := time.perf_counter()) < deadline[0]:
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    errors[index] += 1
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                connection.close()
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                continue
            mine.append(time.perf_counter() - now)
        connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - began
    every = sorted(x for mine in latencies for x in mine)
    if not every:
        raise RuntimeError(f"no request to {url} succeeded")
    return Round(
        len(every),
        took,
        every[len(every) // 2] * 1000,
        every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
        sum(errors),
    )


def cpu_seconds(pid: int) -> float:
    from bench._support import process_tree_cpu_seconds

    return process_tree_cpu_seconds(pid)


def wait_ready(url: str, headers: dict[str, str]) -> None:
    target = http.client.urlsplit(url)
    for _ in range(240):
        try:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=2)
            connection.request("GET", target.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            connection.close()
            if response.status == 200:
                return
            raise RuntimeError(f"{url}: {response.status} {body[:300]!r}")
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} never answered")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=1000)
    parser.add_argument("--issued-share", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    STATE.mkdir(parents=True, exist_ok=True)

    from bench._support import migrated_database
    from devstack.commands import web_command
    from devstack.servers import free_port, resolve_redis_url, script_path, stop_process_groups

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    load = wrk_round if use_wrk else python_round
    load_name = "wrk (2 threads)" if use_wrk else "Python client (threads, keep-alive)"

    processes: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        database_url = stack.enter_context(migrated_database(STATE))
        redis_url, embedded_redis = resolve_redis_url(STATE, allow_local=True)
        if embedded_redis is not None:
            stack.callback(embedded_redis.stop)
        elif "REDIS_URL" not in os.environ:
            redis_url = redis_url.rsplit("/", 1)[0] + "/9"
        ids = seed(database_url, args.invoices, args.issued_share)
        one = ids[len(ids) // 2]
        paths = {"one invoice": f"/v1/invoices/{one}", "page of 100": f"/v1/invoices?limit={PAGE}"}
        statements = statements_per_request(database_url, redis_url, list(paths.values()))

        ours_port, bare_port = free_port(), free_port()
        logs = (STATE / "api_reads.log").open("ab")
        ours_env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            # Counted as always, but the one key of the benchmark is never refused.
            "API_RATE_LIMIT": "1000000 per second",
        }
        bare_env = {**os.environ, "BARE_DATABASE_URL": database_url}
        ours_command = web_command(ours_port, STATE / "api_reads.ctl", workers=2, threads=4)
        bare_command = [
            str(script_path("gunicorn")),
            # Started from STATE, where no gunicorn.conf.py is: not the service's settings.
            "--chdir",
            str(ROOT),
            "--bind",
            f"127.0.0.1:{bare_port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--worker-class",
            "gthread",
            "--control-socket",
            str(STATE / "api_reads_bare.ctl"),
            "bench.api_reads:bare_app()",
        ]
        try:
            for command, env, cwd in (
                (ours_command, ours_env, ROOT),
                (bare_command, bare_env, STATE),
            ):
                processes.append(
                    subprocess.Popen(
                        command, env=env, stdout=logs, stderr=logs, start_new_session=True, cwd=cwd
                    )
                )
            servers = {
                "ours": (f"http://127.0.0.1:{ours_port}", processes[0].pid),
                "bare": (f"http://127.0.0.1:{bare_port}", processes[1].pid),
            }
            headers = {"Authorization": f"Bearer {ADMIN_SECRET}"}
            for base, _ in servers.values():
                for path in paths.values():
                    wait_ready(base + path, headers)
            print(
                f"load: {load_name}, {args.connections} connections; {args.rounds} rounds of "
                f"{args.seconds:g} s per side and read, alternating ours/bare; "
                f"{args.invoices} invoices of 3 lines, {args.issued_share:.0%} issued"
            )
            results: dict[str, dict[str, Side]] = {}
            for read, path in paths.items():
                sides = {"ours": Side(), "bare": Side()}
                for _ in range(args.rounds):
                    for name, (base, pid) in servers.items():
                        load(base + path, headers, args.connections, args.warmup)
                        before = cpu_seconds(pid)
                        done = load(base + path, headers, args.connections, args.seconds)
                        done.cpu_seconds = cpu_seconds(pid) - before
                        if done.errors:
                            raise RuntimeError(f"{name} {path}: {done.errors} failed requests")
                        sides[name].rounds.append(done)
                results[read] = sides
        finally:
            stop_process_groups(processes)

    for (read, sides), count in zip(results.items(), statements, strict=True):
        ours, bare = sides["ours"], sides["bare"]
        for name, side in sides.items():
            print(
                f"{read:12s} {name}: {side.rate:7.1f} req/s  p50 {side.p50:6.1f} ms  "
                f"p99 {side.p99:6.1f} ms  CPU {side.cpu_ms:5.2f} ms/request  (rounds: "
                + ", ".join(
                    f"{r.requests / r.seconds:.0f}/s p99 {r.p99_ms:.0f}" for r in side.rounds
                )
                + ")"
            )
        print(
            f"{read:12s} ours/bare: rate {ours.rate / bare.rate:.2f}, p99 {ours.p99 / bare.p99:.2f}"
            f", CPU per request {ours.cpu_ms / bare.cpu_ms:.2f}; "
            f"ours sends {count} statements per request"
        )
    one_side, page_side = results["one invoice"], results["page of 100"]
    print(
        "ratios ours/bare: one invoice "
        f"{one_side['ours'].rate / one_side['bare'].rate:.2f} (target >= 0.6), page of 100 "
        f"{page_side['ours'].rate / page_side['bare'].rate:.2f} (target >= 0.5); p99 "
        f"{one_side['ours'].p99 / one_side['bare'].p99:.2f} and "
        f"{page_side['ours'].p99 / page_side['bare'].p99:.2f} (target <= 2)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
