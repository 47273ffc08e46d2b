"""Charges per second end to end (finalize over HTTP -> paid in PostgreSQL), against two
baselines measured in the same run at the same concurrency:
  * the same use case written the simple way the Flask and Celery guides teach
    (bench/_guide_app.py): a Flask view inserts an invoice row and calls `.delay()`, a
    Celery task checks an idempotency key in a table, creates the confirmed PaymentIntent
    with the SDK and commits the status. Same PostgreSQL server, same Redis, same emulator,
    a gunicorn like ours and a Celery worker with our billing worker's pool and concurrency;
  * the raw floor: the emulator's own rate for the same PaymentIntent calls made straight
    with the SDK.
Last line: ours over the guide-style version (target: at least 0.5), and ours over the raw
floor (the earlier target: at least 0.7).

    python bench/charges.py [--invoices 300] [--concurrency 8] [--rounds 4]

The three alternate in rounds (SDK, service, guide-style, then SDK, guide-style, service...),
each on an emptied emulator (it slows as its store grows), and each rate is its charges over
its summed time: on a shared machine a slow spell then slows all of them, instead of
deciding a ratio by falling on one. A service round starts with a new customer and card (the
emptied emulator forgot the last ones); only its finalize requests and the wait for "paid"
are timed. A guide-style round likewise starts with a new customer and card; its invoice
requests (the insert and `.delay()`) and the wait for "paid" are timed.

Uses DATABASE_URL / REDIS_URL or the machine's servers, else embedded ones (as the tests do);
always starts its own Stripe emulator, web servers and workers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import requests
import stripe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._support import (  # noqa: E402
    connect,
    matching_processes_cpu_seconds,
    process_tree_cpu_seconds,
    scratch_database,
)
from devstack.commands import (  # noqa: E402
    DEFAULT_POOLS,
    WORKER_FLAGS,
    web_command,
    worker_command,
)
from devstack.servers import (  # noqa: E402
    LocalStripe,
    free_port,
    resolve_database_url,
    resolve_redis_url,
    script_path,
    stop_process_groups,
)

STATE = ROOT / ".devstack" / "bench"
CARD = "4242424242424242"


def _cpu_seconds(
    processes: list[subprocess.Popen[bytes]], emulator: LocalStripe, database_url: str
) -> dict[str, float]:
    """CPU time used so far by the web server, the billing worker and the emulator, each
    with its children (gunicorn's and celery's forked workers), by the PostgreSQL backends
    serving this run's database, by Redis, and by the whole machine."""
    import psutil

    tree = process_tree_cpu_seconds
    machine = psutil.cpu_times()
    database = database_url.rsplit("/", 1)[1]
    return {
        "web": tree(processes[0].pid),
        "worker": tree(processes[1].pid),
        "emulator": tree(emulator.pid),
        # Backends connect and leave with the pools: a backend gone between the two
        # readings drops out, so this is a floor.
        "postgres": matching_processes_cpu_seconds("postgres:", f" {database} "),
        "redis": matching_processes_cpu_seconds("redis-server"),
        # Everything else too: PostgreSQL, Redis, this script's own HTTP client.
        "machine": machine.user + machine.system + machine.nice,
    }


def _pay_directly(client: stripe.StripeClient, n: int, concurrency: int) -> float:
    """Seconds taken by n confirmed PaymentIntents made straight with the SDK."""
    customer = client.v1.customers.create(params={"name": "bench"})
    pm = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    client.v1.payment_methods.attach(pm.id, params={"customer": customer.id})

    def one(i: int) -> None:
        client.v1.payment_intents.create(
            params={
                "amount": 1000 + i,
                "currency": "eur",
                "customer": customer.id,
                "payment_method": pm.id,
                "confirm": True,
                "off_session": True,
                "metadata": {"invoice_id": f"direct-{i}", "ledger_key": f"direct-{i}"},
            },
            options={"idempotency_key": f"direct-{i}"},
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - started


def paying_customer(api: requests.Session, url: str, client: stripe.StripeClient) -> str:
    customer = api.post(
        f"{url}/v1/customers",
        json={"name": "bench", "email": "b@bench.example", "currency": "eur"},
    ).json()
    while not api.get(f"{url}/v1/customers/{customer['id']}").json()["stripe_customer_id"]:
        time.sleep(0.2)
    pm = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    api.post(f"{url}/v1/customers/{customer['id']}/payment_method", json={"payment_method": pm.id})
    return str(customer["id"])


def draft_invoices(api: requests.Session, url: str, customer_id: str, count: int) -> list[str]:
    """`count` one-line drafts for the customer, each for a different amount."""
    return [
        api.post(
            f"{url}/v1/invoices",
            json={
                "customer": customer_id,
                "lines": [{"description": "Seats", "unit_amount": 1000 + i}],
            },
        ).json()["id"]
        for i in range(count)
    ]


def guide_commands(port: int, concurrency: int, pool: str | None) -> tuple[list[str], list[str]]:
    """The guide-style app's web server and Celery worker, run as ours are: gunicorn with
    the same workers and threads, a worker with our billing worker's pool and concurrency
    (and the same start flags, which only spare startup and broker chatter)."""
    from bench._guide_app import QUEUE

    web = web_command(port, STATE / "guide-gunicorn.ctl", workers=2, threads=concurrency)
    web[-1] = "bench._guide_app:create_app()"
    pool = pool or DEFAULT_POOLS.get("billing")
    worker = [
        str(script_path("celery")),
        "-A",
        "bench._guide_worker",
        "worker",
        "-Q",
        QUEUE,
        "-n",
        f"guide-{os.getpid()}@%h",
        "--concurrency",
        str(concurrency),
        *(["--pool", pool] if pool else []),
        *WORKER_FLAGS,
    ]
    return web, worker


def guide_customer(client: stripe.StripeClient, guide_app: Any) -> int:
    """A Stripe customer with a card, and its row in the guide-style app's database."""
    from bench._guide_app import Customer, db

    customer = client.v1.customers.create(params={"name": "bench", "email": "b@bench.example"})
    pm = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    client.v1.payment_methods.attach(pm.id, params={"customer": customer.id})
    with guide_app.app_context():
        row = Customer(
            name="bench",
            email="b@bench.example",
            stripe_customer_id=customer.id,
            payment_method=pm.id,
        )
        db.session.add(row)
        db.session.commit()
        return int(row.id)


def guide_invoice(api: requests.Session, url: str, customer_id: int, amount: int) -> None:
    """One invoice for the guide-style app: inserted, its charge task queued."""
    response = api.post(f"{url}/invoices", json={"customer_id": customer_id, "amount": amount})
    response.raise_for_status()


def wait_for_paid(db: Any, target: int, what: str, stall_seconds: float = 600.0) -> None:
    """Until `target` invoices are paid; raises when none more were paid for a while."""
    seen, since = -1, time.monotonic()
    while True:
        cursor = db.cursor()
        cursor.execute("SELECT count(*) FROM invoices WHERE status = 'paid'")
        paid = cursor.fetchone()[0]
        if paid >= target:
            return
        if paid != seen:
            seen, since = paid, time.monotonic()
        elif time.monotonic() - since > stall_seconds:
            raise RuntimeError(f"{what}: {paid} of {target} invoices paid, none more for a while")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invoices", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--pool", default=None, help="the billing worker's Celery pool (the guide-style one's too)"
    )
    parser.add_argument(
        "--fast-emulator",
        action="store_true",
        help="switch off the emulator's pickle-on-every-write (as the tests do); by default it "
        "runs as shipped, the emulator the issue's 70-140 PaymentIntents/s were measured on",
    )
    args = parser.parse_args()
    # Stopped from outside (timeout, Ctrl-C in a pipeline): still stop what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    STATE.mkdir(parents=True, exist_ok=True)

    server_url, embedded_pg = resolve_database_url(STATE, allow_local=True)
    redis_url, embedded_redis = resolve_redis_url(STATE, allow_local=True)
    if embedded_redis is None and "REDIS_URL" not in os.environ:
        redis_url = redis_url.rsplit("/", 1)[0] + "/9"
    scratch = ExitStack()
    database_url = scratch.enter_context(scratch_database(server_url))
    guide_database_url = scratch.enter_context(scratch_database(server_url))
    emulator = LocalStripe(STATE, as_shipped=not args.fast_emulator)
    stripe_base = emulator.start()
    port, guide_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": stripe_base,
        "LOG_LEVEL": "WARNING",
        # The benchmark measures the service, not the per-key rate limit its one key has.
        "API_RATE_LIMIT": "100000 per second",
    }
    guide_env = {
        **env,
        "DATABASE_URL": guide_database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    processes: list[subprocess.Popen[bytes]] = []
    guide_processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(
            [str(script_path("billing")), "db", "upgrade"], env=env, check=True, capture_output=True
        )
        key = json.loads(
            subprocess.run(
                [str(script_path("billing")), "api-keys", "create", "--admin", "--name", "bench"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )["secret"]
        from bench._guide_app import create_app as create_guide_app
        from bench._guide_app import db as guide_db

        guide_app = create_guide_app(guide_env)
        with guide_app.app_context():
            guide_db.create_all()
        logs = (STATE / "processes.log").open("ab")
        for command in (
            web_command(port, STATE / "gunicorn.ctl", workers=2, threads=args.concurrency),
            worker_command(
                "billing", f"bench-{os.getpid()}@%h", concurrency=args.concurrency, pool=args.pool
            ),
        ):
            processes.append(
                subprocess.Popen(
                    command, env=env, stdout=logs, stderr=logs, start_new_session=True, cwd=ROOT
                )
            )
        # Started outside the repository: gunicorn would read our gunicorn.conf.py (JSON
        # access logs, metrics files) from its working directory; the guide-style app runs
        # with gunicorn's defaults.
        for command in guide_commands(guide_port, args.concurrency, args.pool):
            guide_processes.append(
                subprocess.Popen(
                    command,
                    env=guide_env,
                    stdout=logs,
                    stderr=logs,
                    start_new_session=True,
                    cwd=STATE,
                )
            )
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {key}"
        url = f"http://127.0.0.1:{port}"
        guide_api = requests.Session()
        guide_url = f"http://127.0.0.1:{guide_port}"
        for _ in range(120):
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        for _ in range(120):  # the guide-style app has no health route: any answer will do
            try:
                requests.get(f"{guide_url}/", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.5)

        client = stripe.StripeClient(
            "sk_test_local", base_addresses={"api": stripe_base}, max_network_retries=0
        )
        rounds = max(1, min(args.rounds, args.invoices))
        sizes = [args.invoices // rounds + (r < args.invoices % rounds) for r in range(rounds)]
        direct_seconds = service_seconds = finalize_seconds = 0.0
        guide_seconds = guide_requests_seconds = 0.0
        zero = dict.fromkeys(("web", "worker", "emulator", "postgres", "redis", "machine"), 0.0)
        cpu, guide_cpu = dict(zero), dict(zero)
        paid_so_far = guide_paid_so_far = 0
        with (
            closing(connect(database_url)) as db,
            closing(connect(guide_database_url)) as guide_pg,
        ):

            def service_round(size: int) -> None:
                nonlocal service_seconds, finalize_seconds, paid_so_far
                # Fresh connections each round: one left idle since the last round may be
                # closed by the server (its keep-alive ran out) just as it is reused.
                api.close()
                emulator.reset()
                customer_id = paying_customer(api, url, client)
                drafts = draft_invoices(api, url, customer_id, size)
                cpu_before = _cpu_seconds(processes, emulator, database_url)
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                    list(pool.map(lambda i: api.post(f"{url}/v1/invoices/{i}/finalize"), drafts))
                finalize_seconds += time.perf_counter() - started
                paid_so_far += size
                wait_for_paid(db, paid_so_far, "service")
                service_seconds += time.perf_counter() - started
                for k, v in _cpu_seconds(processes, emulator, database_url).items():
                    cpu[k] += v - cpu_before[k]

            def guide_round(size: int, *, timed: bool = True) -> None:
                nonlocal guide_seconds, guide_requests_seconds, guide_paid_so_far
                guide_api.close()  # as for the service's rounds
                emulator.reset()
                customer_id = guide_customer(client, guide_app)
                cpu_before = _cpu_seconds(guide_processes, emulator, guide_database_url)
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                    list(
                        pool.map(
                            lambda i: guide_invoice(guide_api, guide_url, customer_id, 1000 + i),
                            range(size),
                        )
                    )
                requests_seconds = time.perf_counter() - started
                guide_paid_so_far += size
                wait_for_paid(guide_pg, guide_paid_so_far, "guide-style version")
                if timed:
                    guide_requests_seconds += requests_seconds
                    guide_seconds += time.perf_counter() - started
                    for k, v in _cpu_seconds(guide_processes, emulator, guide_database_url).items():
                        guide_cpu[k] += v - cpu_before[k]

            # Untimed: the guide-style worker is up and its first task's imports are done
            # (ours is warmed by its customer's sync, before each of its rounds).
            guide_round(2, timed=False)
            for number, size in enumerate(sizes):
                emulator.reset()  # the emulator slows as its store grows: each round starts empty
                direct_seconds += _pay_directly(client, size, args.concurrency)
                for run in (service_round, guide_round)[:: -1 if number % 2 else 1]:
                    run(size)
        baseline = args.invoices / direct_seconds
        service = args.invoices / service_seconds
        guide = args.invoices / guide_seconds
        print(
            f"emulator, direct SDK calls: {baseline:.1f} PaymentIntents/s "
            f"({args.invoices} at concurrency {args.concurrency}, in {rounds} rounds)"
        )
        print(
            f"guide-style Flask/Celery version, invoice request to paid in PostgreSQL: "
            f"{guide:.1f} charges/s (its {args.invoices} requests alone took "
            f"{guide_requests_seconds:.2f} s)"
        )
        print(
            f"service, finalize over HTTP to paid in PostgreSQL: {service:.1f} charges/s "
            f"(the {args.invoices} finalize requests alone took {finalize_seconds:.2f} s)"
        )
        for name, spent in (("service", cpu), ("guide-style", guide_cpu)):
            per_charge = ", ".join(f"{k} {1000 * v / args.invoices:.1f}" for k, v in spent.items())
            print(f"CPU ms per charge in the {name} run: {per_charge}")
        print(
            f"ours/simple guide version: {service / guide:.2f} "
            f"(ours {service:.1f}/s, simple {guide:.1f}/s); "
            f"ours/raw floor: {service / baseline:.2f}"
        )
        return 0
    finally:
        stop_process_groups(processes + guide_processes)
        emulator.stop()
        scratch.close()
        if embedded_redis is not None:
            embedded_redis.stop()
        if embedded_pg is not None:
            embedded_pg.stop()


if __name__ == "__main__":
    sys.exit(main())
