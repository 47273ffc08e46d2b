"""Outgoing webhooks through real processes while the webhooks worker is SIGKILLed, Redis
forgets everything once, and the receiver answers 500, hangs past the service's timeout
and goes away for a while: counted on the receiver's own side, every recorded event
arrives signed and accepted, and no object's events ever arrive out of order."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from billing.platform.outbox import LIVENESS_WINDOW, SENT_GRACE
from devstack.servers import LocalStripe
from devstack.smtp import SmtpSink
from tests.e2e.conftest import Stack, create_admin_key, retrying_client, start_stack, wait_for
from tests.support.webhook_receiver import WebhookReceiver
from workers.runner import BACKOFF_MAX_SECONDS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = int(os.environ.get("BILLING_WEBHOOK_CHAOS_CUSTOMERS", "30"))
UPDATES_PER_CUSTOMER = 8
# The fault window's fixed length (seconds), from the first customer's creation.
FAULT_SECONDS = 45.0
# The service's read timeout, and how long a hung request hangs (well past it).
TIMEOUT_SECONDS = 2
HANG_SECONDS = 5.0
RETRY_FIRST_SECONDS = 1
RETRY_LONGEST_SECONDS = 5
DISPATCH_INTERVAL_SECONDS = 2
SWEEP_INTERVAL_SECONDS = 1  # tests/e2e/conftest.py's FAST_RECOVERY
# A webhooks worker is killed only after it has been ready this long (seconds).
MIN_SERVICE = 1.0
# Seconds of delivery work per event left over at the heal, on a machine half as fast as
# the slowest run measured here (each event took well under 0.1 s of it).
WORK_PER_EVENT = 0.5


def heal_bound(events: int) -> float:
    """How long after the heal every event must have reached the receiver: the protocol's
    longest wait once faults stop (a try hung until the timeout, then the longest of: a
    retry's backoff, a lost message found after SENT_GRACE, a dead worker's job after
    LIVENESS_WINDOW, a job's own backoff after an unexpected error; each then published
    by the next sweep and dispatched by the next pass), plus the work itself at half this
    machine's measured speed. No margin is taken off the protocol's part."""
    protocol = (
        TIMEOUT_SECONDS
        + max(
            RETRY_LONGEST_SECONDS,
            SENT_GRACE.total_seconds(),
            LIVENESS_WINDOW.total_seconds(),
            BACKOFF_MAX_SECONDS,
        )
        + SWEEP_INTERVAL_SECONDS
        + DISPATCH_INTERVAL_SECONDS
    )
    return protocol + events * WORK_PER_EVENT


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    found = WebhookReceiver(hang_seconds=HANG_SECONDS, seed=random.randrange(1 << 30))
    yield found
    found.stop()


@pytest.fixture(scope="module")
def webhook_stack(
    database_url: str, redis_url: str, localstripe: LocalStripe, smtp_server: SmtpSink
) -> Iterator[Stack]:
    localstripe.reset()
    smtp_server.handler.clear()
    stack = start_stack(
        database_url,
        redis_url,
        localstripe.url,
        smtp=smtp_server,
        extra_env={
            # The stack's processes import this checkout's code, whatever else is installed.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            "WEBHOOK_CONNECT_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            "WEBHOOK_RETRY_FIRST_SECONDS": str(RETRY_FIRST_SECONDS),
            "WEBHOOK_RETRY_LONGEST_SECONDS": str(RETRY_LONGEST_SECONDS),
            "WEBHOOK_DISPATCH_INTERVAL_SECONDS": str(DISPATCH_INTERVAL_SECONDS),
            "OUTBOX_SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL_SECONDS),
            # WEBHOOK_ORDER_WAIT_SECONDS stays at its default (an hour): order is kept.
        },
    )
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def api(webhook_stack: Stack) -> requests.Session:
    return retrying_client(create_admin_key(webhook_stack, "webhook-faults"))


def _ready_at(stack: Stack, name: str) -> float | None:
    """When this run of the process logged "ready." (Unix time), if it has yet."""
    with stack.log_path(name).open("rb") as log:
        log.seek(stack.log_offsets.get(name, 0))
        for line in log:
            if line.startswith(b"{") and b' ready."' in line:
                return datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
    return None


class Faults:
    """Kills the webhooks worker every few seconds (once it has served a while), flushes
    Redis once a third of the way in, and stops the receiver for a while from just before
    half-way; the receiver meanwhile answers 500 to a fifth of the requests and hangs on
    one in twenty."""

    def __init__(self, stack: Stack, receiver: WebhookReceiver) -> None:
        self.stack = stack
        self.receiver = receiver
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.kills = 0
        self.flushed = False
        self.receiver_down_seconds = 0.0
        self.window = 0.0
        self.threads = [
            threading.Thread(target=self._kill_worker, daemon=True),
            threading.Thread(target=self._flush_broker, daemon=True),
            threading.Thread(target=self._receiver_away, daemon=True),
        ]

    def __enter__(self) -> Faults:
        self.receiver.fail_share = 0.2
        self.receiver.hang_share = 0.05
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        self.receiver.fail_share = self.receiver.hang_share = 0.0
        if self.receiver._server is None:
            self.receiver.start()
        self.window = self.elapsed()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sleep_until(self, seconds_into_the_window: float) -> None:
        time.sleep(max(0.0, seconds_into_the_window - self.elapsed()))

    def _kill_worker(self) -> None:
        name = "worker-webhooks"
        while not self.stopping.wait(random.uniform(3.0, 6.0)):
            while not self.stopping.is_set():
                ready_at = _ready_at(self.stack, name)
                if ready_at is not None and time.time() - ready_at > MIN_SERVICE:
                    break
                self.stopping.wait(0.1)
            if self.stopping.is_set():
                return
            self.stack.stop(name, sig=signal.SIGKILL)
            self.kills += 1
            self.stack.start_worker("webhooks")

    def _flush_broker(self) -> None:
        if not self.stopping.wait(FAULT_SECONDS / 3):
            self.stack.redis.flushdb()  # every queued and unacked message is forgotten
            self.flushed = True

    def _receiver_away(self) -> None:
        if self.stopping.wait(FAULT_SECONDS * 0.4):
            return
        self.receiver.stop()
        down = time.monotonic()
        self.stopping.wait(10.0)
        self.receiver.start()  # on the same port
        self.receiver_down_seconds = time.monotonic() - down


def _customer_with_updates(stack: Stack, api: requests.Session, number: int) -> str:
    """A customer, then its updates a couple of seconds apart: events spread over the
    fault window, each object's in an order the receiver must see."""
    response = api.post(
        f"{stack.url}/v1/customers",
        json={"name": f"Customer {number}", "email": f"c{number}@hooks.example", "currency": "eur"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    customer_id = str(response.json()["id"])
    for update in range(UPDATES_PER_CUSTOMER):
        time.sleep(random.uniform(1.5, 4.0))
        response = api.patch(
            f"{stack.url}/v1/customers/{customer_id}",
            json={"name": f"Customer {number} v{update + 1}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    return customer_id


def _query(database_url: str, sql: str) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)).all())
    finally:
        engine.dispose()


def _event_ids(database_url: str) -> set[str]:
    return {row[0] for row in _query(database_url, "SELECT id FROM events")}


def _unfinished(database_url: str) -> int:
    return int(
        _query(
            database_url,
            "SELECT count(*) FROM webhook_deliveries WHERE state IN ('waiting', 'pending')",
        )[0][0]
    )


def _stuck(database_url: str) -> str:
    deliveries = _query(
        database_url,
        "SELECT d.state, count(*), min(d.attempts), max(d.attempts), "
        "left(max(d.last_error), 120) FROM webhook_deliveries d GROUP BY d.state",
    )
    jobs = _query(
        database_url,
        "SELECT state, count(*), left(max(last_error), 120), min(lease_expires_at - now()) "
        "FROM outbox_jobs WHERE name = 'webhooks.deliver' GROUP BY state",
    )
    undispatched = _query(database_url, "SELECT count(*) FROM events WHERE NOT dispatched")
    return (
        f"deliveries by state: {[tuple(r) for r in deliveries]}; "
        f"deliver jobs by state: {[tuple(r) for r in jobs]}; "
        f"undispatched events: {undispatched[0][0]}"
    )


def _out_of_order(accepted: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(object, highest sequence seen, lower sequence accepted after it) for every event
    accepted after a later one of its object."""
    highest: dict[str, int] = {}
    backwards: list[tuple[str, int, int]] = []
    for event in accepted:
        key = f"{event['data']['object_type']}:{event['data']['object']['id']}"
        sequence = int(event["sequence"])
        if sequence < highest.get(key, sequence):
            backwards.append((key, highest[key], sequence))
        highest[key] = max(highest.get(key, sequence), sequence)
    return backwards


def test_every_event_arrives_signed_and_in_order_per_object_under_faults(
    webhook_stack: Stack, api: requests.Session, receiver: WebhookReceiver, database_url: str
) -> None:
    stack = webhook_stack
    response = api.post(
        f"{stack.url}/v1/webhook_endpoints",
        json={"url": receiver.url, "enabled_events": ["*"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    receiver.secrets.append(response.json()["secret"])

    with Faults(stack, receiver) as faults:
        with ThreadPoolExecutor(max_workers=CUSTOMERS) as pool:
            customers = list(
                pool.map(lambda n: _customer_with_updates(stack, api, n), range(CUSTOMERS))
            )
        created_after = faults.elapsed()
        # A machine too slow to make every change within the window keeps the faults
        # going until the last change is made.
        faults.sleep_until(max(FAULT_SECONDS, created_after + 1))
    heal = time.monotonic()
    events = _event_ids(database_url)
    bound = heal_bound(len(events))
    accepted_at_heal = len({e["id"] for e in receiver.accepted()} & events)

    def all_arrived() -> bool:
        # Events recorded after the heal (a customer's Stripe sync) must arrive too.
        wanted = _event_ids(database_url)
        arrived = {e["id"] for e in receiver.accepted()}
        return wanted <= arrived and _unfinished(database_url) == 0

    try:
        wait_for(all_arrived, timeout=bound, interval=1)
    except AssertionError as exc:
        missing = _event_ids(database_url) - {e["id"] for e in receiver.accepted()}
        raise AssertionError(
            f"{exc}; {len(missing)} events never accepted by the receiver; {_stuck(database_url)}"
        ) from None
    settled_after_heal = time.monotonic() - heal

    events = _event_ids(database_url)
    accepted = receiver.accepted()
    with receiver._lock:
        received = list(receiver.received)
    # Every signature verified, on every request, whatever it was answered.
    unsigned = [r.event["id"] for r in received if not r.signed]
    assert not unsigned, f"{len(unsigned)} requests failed the receiver's signature check"
    # Each object's accepted events, in arrival order, never go back in sequence.
    backwards = _out_of_order(accepted)
    assert not backwards, f"accepted out of order (object, highest, later lower): {backwards[:10]}"
    assert {e["id"] for e in accepted} >= events
    states = dict(
        _query(database_url, "SELECT state, count(*) FROM webhook_deliveries GROUP BY state")
    )
    assert states == {"succeeded": len(events)}, states
    objects = {f"{e['data']['object_type']}:{e['data']['object']['id']}" for e in accepted}
    assert {f"customer:{c}" for c in customers} <= objects
    assert faults.kills >= 3 and faults.flushed and faults.receiver_down_seconds > 0
    answered = [r.answered for r in received]
    print(
        f"webhook chaos: {len(events)} events about {len(objects)} objects; fault window "
        f"{faults.window:.0f} s: {faults.kills} webhooks worker kills, broker flushed once, "
        f"receiver down {faults.receiver_down_seconds:.0f} s, "
        f"{answered.count(500)} answered 500, {sum(r.hung for r in received)} hung past the "
        f"timeout and {len(accepted)} taken (2xx) of {len(received)} requests; "
        f"{accepted_at_heal} events accepted by the "
        f"heal, all {settled_after_heal:.0f} s after it (bound {bound:.0f} s); "
        f"{len(accepted) - len({e['id'] for e in accepted})} accepted again (duplicates)"
    )
