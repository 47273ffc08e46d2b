"""PostgreSQL round trips per charge, split into the finalize request (web) and the charge
job (billing worker), counted on the wire.

    python scripts/pg_roundtrips.py [--invoices 50] [--pool threads] [--show]

The web and the worker each reach PostgreSQL through a proxy of their own that counts the
messages they send: every simple-query message (psycopg2 sends each statement, BEGIN,
COMMIT, ROLLBACK and the pool's pre-ping as one) and every extended-protocol Sync. Only
the finalize requests and the jobs they cause are counted, not the set-up before them.
`--show` prints each distinct statement with its count per charge.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path

import psycopg2
import requests
import stripe
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _support import scratch_database  # noqa: E402
from charges import draft_invoices, paying_customer  # noqa: E402

from devstack.commands import web_command, worker_command  # noqa: E402
from devstack.servers import (  # noqa: E402
    LocalStripe,
    free_port,
    resolve_database_url,
    resolve_redis_url,
    script_path,
    stop_process_groups,
)

STATE = ROOT / ".devstack" / "roundtrips"


class CountingProxy:
    """Forwards TCP to PostgreSQL and counts the frontend's query messages."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.statements: collections.Counter[str] = collections.Counter()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.statements.clear()

    def total(self) -> int:
        with self.lock:
            return sum(self.statements.values())

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target)
            threading.Thread(target=self._frontend, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _frontend(self, client: socket.socket, server: socket.socket) -> None:
        buffer = b""
        started = False  # the startup message has no type byte
        try:
            while data := client.recv(65536):
                server.sendall(data)
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 4:
                            break
                        length = int.from_bytes(buffer[:4], "big")
                        if len(buffer) < length:
                            break
                        code = int.from_bytes(buffer[4:8], "big")
                        buffer = buffer[length:]
                        if code != 80877103:  # an SSLRequest is followed by the startup
                            started = True
                        continue
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    length = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 1 + length:
                        break
                    body = buffer[5 : 1 + length]
                    buffer = buffer[1 + length :]
                    if kind == b"Q":
                        self._count(body.rstrip(b"\x00").decode("utf-8", "replace"))
                    elif kind == b"S":
                        self._count("<extended protocol sync>")
        except OSError:
            pass
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, sql: str) -> None:
        shape = re.sub(r"'(?:[^']|'')*'", "?", sql)
        shape = re.sub(r"\b\d+\b", "?", shape)
        shape = re.sub(r"\s+", " ", shape).strip()
        with self.lock:
            self.statements[shape] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invoices", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pool", default=None)
    parser.add_argument("--show", action="store_true")
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)

    server_url, embedded_pg = resolve_database_url(STATE, allow_local=True)
    redis_url, embedded_redis = resolve_redis_url(STATE, allow_local=True)
    if embedded_redis is None and "REDIS_URL" not in os.environ:
        redis_url = redis_url.rsplit("/", 1)[0] + "/8"
    scratch = ExitStack()
    database_url = scratch.enter_context(scratch_database(server_url))
    parsed = make_url(database_url)
    if parsed.query.get("host"):
        raise SystemExit("a Unix-socket DATABASE_URL cannot be proxied; use TCP")
    proxies = {
        "web": CountingProxy(parsed.host or "127.0.0.1", parsed.port or 5432),
        "worker": CountingProxy(parsed.host or "127.0.0.1", parsed.port or 5432),
    }

    def via(proxy: CountingProxy) -> str:
        url = parsed.set(host="127.0.0.1", port=proxy.port)
        url = url.update_query_dict({"sslmode": "disable"})
        return url.render_as_string(hide_password=False)

    emulator = LocalStripe(STATE)
    stripe_base = emulator.start()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": stripe_base,
        "LOG_LEVEL": "WARNING",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        billing = str(script_path("billing"))
        subprocess.run([billing, "db", "upgrade"], env=env, check=True, capture_output=True)
        key = json.loads(
            subprocess.run(
                [billing, "api-keys", "create", "--admin", "--name", "roundtrips"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )["secret"]
        logs = (STATE / "processes.log").open("ab")
        web = web_command(port, STATE / "gunicorn.ctl", workers=2, threads=args.concurrency)
        worker = worker_command(
            "billing", f"roundtrips-{os.getpid()}@%h", concurrency=args.concurrency, pool=args.pool
        )
        for command, proxy in ((web, proxies["web"]), (worker, proxies["worker"])):
            processes.append(
                subprocess.Popen(
                    command,
                    env={**env, "DATABASE_URL": via(proxy)},
                    stdout=logs,
                    stderr=logs,
                    start_new_session=True,
                    cwd=ROOT,
                )
            )
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {key}"
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        client = stripe.StripeClient(
            "sk_test_local", base_addresses={"api": stripe_base}, max_network_retries=0
        )
        customer_id = paying_customer(api, url, client)
        drafts = draft_invoices(api, url, customer_id, args.invoices)
        with closing(
            psycopg2.connect(database_url.replace("postgresql+psycopg2", "postgresql"))
        ) as db:
            db.autocommit = True
            time.sleep(1)
            for proxy in proxies.values():
                proxy.reset()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                list(pool.map(lambda i: api.post(f"{url}/v1/invoices/{i}/finalize"), drafts))
            while True:
                cursor = db.cursor()
                cursor.execute("SELECT count(*) FROM invoices WHERE status = 'paid'")
                if cursor.fetchone()[0] >= args.invoices:
                    break
                time.sleep(0.05)
            time.sleep(1)  # the jobs' last commits land after the invoice is paid
        for name, proxy in proxies.items():
            print(f"{name}: {proxy.total() / args.invoices:.2f} round trips per charge")
            if args.show:
                for sql, count in proxy.statements.most_common():
                    print(f"  {count / args.invoices:6.2f}  {sql[:160]}")
        total = sum(p.total() for p in proxies.values()) / args.invoices
        print(f"total: {total:.2f} PostgreSQL round trips per charge")
        return 0
    finally:
        stop_process_groups(processes)
        emulator.stop()
        scratch.close()
        if embedded_redis is not None:
            embedded_redis.stop()
        if embedded_pg is not None:
            embedded_pg.stop()


if __name__ == "__main__":
    sys.exit(main())
