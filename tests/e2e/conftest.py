"""A whole local stack of real processes: gunicorn, one Celery worker per queue, and beat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import stripe
from sqlalchemy import create_engine, text

from devstack.commands import QUEUES, beat_command, web_command, worker_command
from devstack.servers import LocalStripe, free_port, script_path
from devstack.smtp import SmtpSink
from tests.conftest import CARD_OK, STATE, TABLES
from tests.support.stripe_proxy import StripeProxy

LOGS = STATE / "e2e"
# Sweeps every second, so that a lost job is found again as soon as that is knowable; the
# lease stays as in production, the last resort no test should need to wait for.
FAST_RECOVERY = {"OUTBOX_SWEEP_INTERVAL_SECONDS": "1"}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {predicate}")
        time.sleep(interval)


class Stack:
    def __init__(self, env: dict[str, str], redis_url: str) -> None:
        self.env = env
        self.redis = redis.Redis.from_url(redis_url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Where each process's current run begins in its (appended) log.
        self.log_offsets: dict[str, int] = {}
        LOGS.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return LOGS / f"{name}.log"

    def _start(self, name: str, command: list[str]) -> None:
        log = self.log_path(name).open("ab")
        self.log_offsets[name] = log.tell()
        self.processes[name] = subprocess.Popen(
            command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def start_web(self) -> None:
        self._start("web", web_command(self.port, LOGS / "gunicorn.ctl", threads=8))
        wait_for(self._ready, timeout=60)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, queue: str, suffix: str = "") -> None:
        name = f"worker-{queue}{suffix}"
        command = worker_command(queue, f"{queue}{suffix}-{os.getpid()}@%h")
        if queue != "billing":
            # On ECS each queue's workers have CPUs of their own; on these two cores a
            # burst of PDF renders would otherwise starve the charge path it never shares
            # a machine with in production.
            command = ["nice", "-n", "10", *command]
        self._start(name, command)

    def start_beat(self, name: str = "beat") -> None:
        self._start(name, beat_command())

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


def start_stack(
    database_url: str,
    redis_url: str,
    stripe_base: str,
    *,
    smtp: SmtpSink,
    extra_env: dict[str, str] | None = None,
    billing_workers: int = 1,
) -> Stack:
    """A fresh stack on emptied tables and an emptied broker database."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": stripe_base,
        "STRIPE_WEBHOOK_SECRET": "whsec_test",
        "MAIL_SERVER": smtp.host,
        "MAIL_PORT": str(smtp.port),
        "MAIL_DEFAULT_SENDER": "billing@saas.example",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        # One admin key drives the whole stack here, as fast as it goes, to load the
        # workers; the rate limits have their own tests (tests/integration/test_rate_limits.py).
        "API_RATE_LIMIT": "100000 per second",
        # Webhook endpoints may be a test's own receiver on loopback.
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        **FAST_RECOVERY,
        **(extra_env or {}),
    }
    stack = Stack(env, redis_url)
    # Links in emails and API answers point at the stack itself.
    stack.env.setdefault("PUBLIC_BASE_URL", stack.url)
    stack.redis.flushdb()
    for log in LOGS.glob("*.log"):
        log.unlink()
    try:
        stack.start_web()
        for queue in QUEUES:
            stack.start_worker(queue)
        for number in range(2, billing_workers + 1):
            stack.start_worker("billing", suffix=str(number))
        stack.start_beat()
    except BaseException:
        stack.stop_all()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(
    database_url: str, redis_url: str, localstripe: LocalStripe, smtp_server: SmtpSink
) -> Iterator[Stack]:
    localstripe.reset()
    smtp_server.handler.clear()
    stack = start_stack(database_url, redis_url, localstripe.url, smtp=smtp_server)
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def proxy(localstripe: LocalStripe) -> Iterator[StripeProxy]:
    """A proxy in front of an emptied emulator, for a module whose stack talks to Stripe
    through it (to lose, delay or refuse Stripe's answers)."""
    localstripe.reset()
    proxy = StripeProxy(localstripe.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def emulator(localstripe: LocalStripe) -> Any:
    """The emulator itself, asked directly: the independent truth of what was charged."""
    return stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )


def create_admin_key(stack: Stack, name: str) -> str:
    """An admin key made as an operator makes one, with the `billing` command."""
    output = subprocess.run(
        [str(script_path("billing")), "api-keys", "create", "--admin", "--name", name],
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(output.strip().splitlines()[-1])["secret"])


def paying_customer(stack: Stack, api: requests.Session, emulator: Any) -> dict[str, Any]:
    """A customer synced to Stripe with a working card as its default payment method."""
    customer = api.post(
        f"{stack.url}/v1/customers",
        json={"name": "Acme", "email": "billing@acme.example", "currency": "eur"},
        timeout=30,
    ).json()
    wait_for(
        lambda: api.get(f"{stack.url}/v1/customers/{customer['id']}", timeout=10).json()[
            "stripe_customer_id"
        ],
        timeout=60,
    )
    pm = emulator.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    response = api.post(
        f"{stack.url}/v1/customers/{customer['id']}/payment_method",
        json={"payment_method": pm.id},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return create_admin_key(stack, "e2e-admin")


@pytest.fixture(scope="module")
def http(stack: Stack, admin_key: str) -> requests.Session:
    return retrying_client(admin_key)


class _KeyedSession(requests.Session):
    """A client as a careful integrator writes one: every POST under a fresh
    Idempotency-Key, and a lost connection (gunicorn closing an idle keep-alive socket
    just as a request leaves) retried under that same key."""

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        if method.upper() == "POST":
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("Idempotency-Key", uuid.uuid4().hex)
            kwargs["headers"] = headers
        return super().request(method, url, *args, **kwargs)


def retrying_client(secret: str) -> requests.Session:
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = _KeyedSession()
    session.headers["Authorization"] = f"Bearer {secret}"
    retry = Retry(total=3, connect=3, read=3, status=0, allowed_methods=None, backoff_factor=0.2)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session
