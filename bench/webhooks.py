"""Outgoing webhooks: how fast events reach a receiver through the real path, and what
recording events costs a finalization. Both in one run, each against its baseline:

  (a) delivery: events delivered per second to a local receiver that answers 200 at once
      (receiver processes of its own, sharing one port), through the real path: beat's
      dispatch task (sent by this script at the start of each round, as beat sends it)
      run by a real `celery -A workers worker -Q webhooks` worker, which turns the events
      into deliveries, then signs, POSTs and records each one, a job per delivery through
      the outbox and Redis. Timed from the dispatch to the last delivery recorded
      succeeded in PostgreSQL. Baseline: plain `requests.post` of the same bodies to the
      same receiver from as many processes as the worker has (target: the service at
      least 0.5 of it).
  (b) finalize: the `finalize_invoice` use case in this process (the jobs it records are
      not published), with no webhook endpoint configured against three endpoints
      configured (events are recorded either way; endpoints only matter once the
      dispatcher runs, off the finalize path); for reference, also with event recording
      switched off, which is the cost of the event log itself.

Each part alternates its sides in rounds (the order flipped every round), and each rate is
its items over its summed time: on a shared machine a slow spell then slows both sides
instead of deciding the ratio. Last line: delivered/plain POSTs, and finalize with three
endpoints/with none.

    python bench/webhooks.py [--events 2000] [--concurrency 4] [--invoices 300] [--rounds 4]

Uses DATABASE_URL / REDIS_URL or the machine's servers, else embedded ones (as the tests do).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._support import (  # noqa: E402
    NoBroker,
    connect,
    process_tree_cpu_seconds,
    scratch_database,
)
from devstack.commands import worker_command  # noqa: E402
from devstack.servers import (  # noqa: E402
    free_port,
    resolve_database_url,
    resolve_redis_url,
    script_path,
    stop_process_groups,
)

STATE = ROOT / ".devstack" / "bench"
# Away from the databases a developer's stack (0), the tests (10-15) and bench/charges.py
# (9) use on a shared Redis.
REDIS_DB = 7
RECEIVERS = 2
STALL_SECONDS = 120.0


# --- the receiver --------------------------------------------------------------------------


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class _SharedPortServer(ThreadingHTTPServer):
    allow_reuse_port = True  # several receiver processes on one port: the kernel spreads them
    daemon_threads = True


def _receive(port: int) -> None:
    with _SharedPortServer(("127.0.0.1", port), _Ok) as server:
        server.serve_forever()


# --- the baseline: plain requests.post ------------------------------------------------------

_URL = ""


def _post(body: bytes) -> int:
    return requests.post(
        _URL, data=body, headers={"Content-Type": "application/json"}, timeout=10
    ).status_code


def _set_url(url: str) -> None:
    global _URL
    _URL = url


# --- seeding --------------------------------------------------------------------------------


def _seed_events(database_url: str, template_event: str, count: int) -> list[str]:
    """`count` undispatched events, each about an object of its own (so that none waits
    behind another), with the snapshot of a real customer.created event; returns their ids."""
    tag = uuid.uuid4().hex[:8]
    with closing(connect(database_url)) as db, db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO events (id, type, object_type, object_id, customer_id, data) "
            "SELECT 'evt_bench_' || %(tag)s || '_' || i, type, object_type, "
            "'cus_bench_' || %(tag)s || '_' || i, customer_id, data "
            "FROM events, generate_series(1, %(count)s) AS i WHERE events.id = %(id)s "
            "ORDER BY i RETURNING id",
            {"tag": tag, "count": count, "id": template_event},
        )
        return [row[0] for row in cursor.fetchall()]


def _bodies(app: Any, event_ids: list[str]) -> list[bytes]:
    """The bodies the service sends for these events, serialised as it does."""
    from sqlalchemy import select

    from billing.events.events import envelope
    from billing.extensions import db
    from billing.models import Event

    with app.app_context():
        events = db.session.scalars(select(Event).where(Event.id.in_(event_ids))).all()
        bodies = [json.dumps(envelope(e), separators=(",", ":")).encode() for e in events]
        db.session.remove()
        return bodies


def _succeeded(db: Any) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM webhook_deliveries WHERE state = 'succeeded'")
        return int(cursor.fetchone()[0])


def _wait_for_succeeded(db: Any, target: int) -> None:
    seen, since = -1, time.monotonic()
    while True:
        done = _succeeded(db)
        if done >= target:
            return
        if done != seen:
            seen, since = done, time.monotonic()
        elif time.monotonic() - since > STALL_SECONDS:
            with db.cursor() as cursor:
                cursor.execute("SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
                states = cursor.fetchall()
            raise RuntimeError(f"{done} of {target} deliveries succeeded, none more: {states}")
        time.sleep(0.02)


def _cpu(worker_pid: int) -> dict[str, float]:
    """CPU seconds so far of the webhooks worker (with its pool) and of the whole machine
    (PostgreSQL, Redis, the receivers and this script too)."""
    import psutil

    machine = psutil.cpu_times()
    return {
        "worker": process_tree_cpu_seconds(worker_pid),
        "machine": machine.user + machine.system + machine.nice,
    }


@contextmanager
def _recording_off() -> Iterator[None]:
    from billing.events import events

    with mock.patch.object(events, "record_many", lambda *args, **kwargs: None):
        yield


def _finalize_round(app: Any, customer_id: str, size: int, around: Callable[[], Any]) -> float:
    """Seconds the finalize use case takes for `size` fresh one-line drafts (made untimed)."""
    from decimal import Decimal

    from billing.invoicing import invoices

    with app.app_context():
        drafts = [
            invoices.create_invoice(
                invoices.InvoiceFields(
                    customer_id=customer_id,
                    lines=[invoices.LineFields("Seats", 1 + i % 9, 1000 + i, tax_rate=Decimal(19))],
                )
            ).id
            for i in range(size)
        ]
        with around():
            started = time.perf_counter()
            for invoice_id in drafts:
                invoices.finalize_invoice(invoice_id)
            return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4, help="the webhooks worker's")
    parser.add_argument("--invoices", type=int, default=300, help="finalized per variant")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    STATE.mkdir(parents=True, exist_ok=True)

    server_url, embedded_pg = resolve_database_url(STATE, allow_local=True)
    redis_url, embedded_redis = resolve_redis_url(STATE, allow_local=True)
    if embedded_redis is None and "REDIS_URL" not in os.environ:
        redis_url = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    scratch = ExitStack()
    database_url = scratch.enter_context(scratch_database(server_url))
    port = free_port()
    receiver_url = f"http://127.0.0.1:{port}/hooks"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        # The worker imports this checkout's code, whatever else is installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    context = multiprocessing.get_context("fork")
    receivers = [
        context.Process(target=_receive, args=(port,), daemon=True) for _ in range(RECEIVERS)
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(
            [str(script_path("billing")), "db", "upgrade"], env=env, check=True, capture_output=True
        )
        for receiver in receivers:
            receiver.start()
        # Forked now, before this process starts any thread (the app's pools, Celery's
        # producer): a child forked from a threaded process can inherit a held lock and hang.
        pool = context.Pool(args.concurrency, initializer=_set_url, initargs=(receiver_url,))
        for _ in range(100):
            try:
                requests.post(receiver_url, data=b"{}", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        from celery import Celery

        from billing import create_app
        from billing.customers import customers
        from billing.platform import jobs
        from billing.webhooks import endpoints

        app = create_app(env, publisher=NoBroker())
        with app.app_context():
            customer, _ = customers.create_customer(
                customers.CustomerFields("Bench GmbH", "billing@bench.example", "eur")
            )
            customer_id = customer.id
            endpoint, _ = endpoints.create_endpoint(
                endpoints.EndpointFields(url=receiver_url, event_types=["*"])
            )
            endpoint_id = endpoint.id
        with closing(connect(database_url)) as db, db.cursor() as cursor:
            cursor.execute("SELECT id FROM events WHERE object_id = %s", (customer_id,))
            template_event = cursor.fetchone()[0]
            # The customer's own event is not part of any round.
            cursor.execute("UPDATE events SET dispatched = true")

        logs = (STATE / "webhooks-worker.log").open("ab")
        processes.append(
            subprocess.Popen(
                worker_command(
                    "webhooks", f"bench-webhooks-{os.getpid()}@%h", concurrency=args.concurrency
                ),
                env=env,
                stdout=logs,
                stderr=logs,
                start_new_session=True,
                cwd=ROOT,
            )
        )
        producer = Celery("bench", broker=redis_url, set_as_current=False)
        producer.conf.update(task_serializer="json", accept_content=["json"])

        def dispatch() -> None:
            producer.send_task(jobs.DISPATCH_EVENTS, queue="webhooks")

        rounds = max(1, args.rounds)
        sizes = [args.events // rounds + (r < args.events % rounds) for r in range(rounds)]
        service_seconds = plain_seconds = 0.0
        delivered = plain_sent = 0
        service_cpu = {"worker": 0.0, "machine": 0.0}
        with (
            closing(connect(database_url)) as db,
            pool,
        ):

            def service_round(event_ids: list[str]) -> None:
                nonlocal service_seconds, delivered
                target = _succeeded(db) + len(event_ids)
                cpu_before = _cpu(processes[0].pid)
                started = time.perf_counter()
                dispatch()
                _wait_for_succeeded(db, target)
                service_seconds += time.perf_counter() - started
                for key, value in _cpu(processes[0].pid).items():
                    service_cpu[key] += value - cpu_before[key]
                delivered += len(event_ids)

            def plain_round(bodies: list[bytes]) -> None:
                nonlocal plain_seconds, plain_sent
                chunk = max(1, len(bodies) // (4 * args.concurrency))
                started = time.perf_counter()
                statuses = pool.map(_post, bodies, chunksize=chunk)
                plain_seconds += time.perf_counter() - started
                assert set(statuses) == {200}, set(statuses)
                plain_sent += len(bodies)

            # Untimed: the worker is up and its first tasks' imports are done; the pool's
            # processes have made a request each.
            warm = _seed_events(database_url, template_event, 4 * args.concurrency)
            deadline = time.monotonic() + 120
            while _succeeded(db) < len(warm):
                if time.monotonic() > deadline:
                    raise RuntimeError("the webhooks worker delivered nothing in two minutes")
                dispatch()
                time.sleep(1)
            pool.map(_post, _bodies(app, warm), chunksize=1)
            for number, size in enumerate(sizes):
                event_ids = _seed_events(database_url, template_event, size)
                bodies = _bodies(app, event_ids)
                if number % 2:
                    plain_round(bodies)
                    service_round(event_ids)
                else:
                    service_round(event_ids)
                    plain_round(bodies)

        # (b) finalize, without endpoints, with three, and with event recording off.
        with app.app_context():
            endpoints.delete_endpoint(endpoint_id)
        finalize_seconds = {"none": 0.0, "three": 0.0, "off": 0.0}
        per_round = [args.invoices // rounds + (r < args.invoices % rounds) for r in range(rounds)]

        def with_endpoints(count: int) -> Callable[[], Any]:
            @contextmanager
            def configured() -> Iterator[None]:
                with app.app_context():
                    made = [
                        endpoints.create_endpoint(
                            endpoints.EndpointFields(url=receiver_url, event_types=["*"])
                        )[0].id
                        for _ in range(count)
                    ]
                try:
                    yield
                finally:
                    with app.app_context():
                        for made_id in made:
                            endpoints.delete_endpoint(made_id)

            return configured

        variants: dict[str, Callable[[], Any]] = {
            "none": with_endpoints(0),
            "three": with_endpoints(3),
            "off": _recording_off,
        }
        _finalize_round(app, customer_id, 5, variants["none"])  # warm
        for number, size in enumerate(per_round):
            order = list(variants) if number % 2 == 0 else list(reversed(variants))
            for name in order:
                finalize_seconds[name] += _finalize_round(app, customer_id, size, variants[name])

        service = delivered / service_seconds
        plain = plain_sent / plain_seconds
        finalize = {name: args.invoices / seconds for name, seconds in finalize_seconds.items()}
        print(
            f"plain requests.post from {args.concurrency} processes: {plain:.0f} POSTs/s "
            f"({plain_sent} in {rounds} rounds, {RECEIVERS} receiver processes)"
        )
        print(
            f"service, dispatch to delivered and recorded, a webhooks worker of concurrency "
            f"{args.concurrency}: {service:.0f} events/s ({delivered}); CPU ms per event: "
            f"worker {1000 * service_cpu['worker'] / delivered:.1f}, "
            f"machine {1000 * service_cpu['machine'] / delivered:.1f}"
        )
        print(
            f"finalize_invoice in-process: no endpoint {finalize['none']:.0f}/s, three "
            f"endpoints {finalize['three']:.0f}/s, event recording off {finalize['off']:.0f}/s "
            f"({args.invoices} invoices each); the event log costs finalize "
            f"{1 - finalize['none'] / finalize['off']:.0%} of its rate"
        )
        print(
            f"delivered/plain POSTs: {service / plain:.2f} (service {service:.0f}/s, plain "
            f"{plain:.0f}/s); finalize three endpoints/none: "
            f"{finalize['three'] / finalize['none']:.2f} "
            f"({finalize['three']:.0f}/s, {finalize['none']:.0f}/s)"
        )
        return 0
    finally:
        stop_process_groups(processes)
        for receiver in receivers:
            if receiver.is_alive():
                receiver.terminate()
                receiver.join(5)
        scratch.close()
        if embedded_redis is not None:
            embedded_redis.stop()
        if embedded_pg is not None:
            embedded_pg.stop()


if __name__ == "__main__":
    sys.exit(main())
