"""Metrics from real processes: every gunicorn worker's counts summed in one /metrics,
and a prefork Celery worker serving its pool's counts on METRICS_PORT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import create_engine, text

from devstack.commands import worker_command
from devstack.servers import free_port, script_path, stop_process_groups
from tests.conftest import TABLES
from tests.e2e.conftest import LOGS, Stack, retrying_client, wait_for
from tests.support.metrics import Samples, parse_samples, value
from tests.support.webhooks import event, stripe_signature

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "whsec_test"
GUNICORN_WORKERS = 2  # devstack.commands.web_command's default, as on ECS
RECEIVED = {"type": "customer.created", "outcome": "received"}


@pytest.fixture(scope="module")
def web(database_url: str, redis_url: str, tmp_path_factory) -> Iterator[tuple[Stack, Path]]:
    """gunicorn with its metrics directory where the test can look into it."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()
    metrics_dir = tmp_path_factory.mktemp("web-metrics")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    env.pop("METRICS_PORT", None)
    stack = Stack(env, redis_url)
    stack.redis.flushdb()
    try:
        stack.start_web()
        yield stack, metrics_dir
    finally:
        stack.stop_all()


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def received_per_process(metrics_dir: Path) -> dict[str, float]:
    """Each gunicorn worker's own count, read from its file alone."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=alone)
            counts[path.stem] = registry.get_sample_value("billing_webhook_events_total", RECEIVED)
    return {name: count for name, count in counts.items() if count}


def deliver_webhook(stack: Stack, number: int) -> int:
    payload = event("customer.created", {"id": f"cus_{number}"})
    # A connection of its own each time: the kernel hands each to either worker.
    response = requests.post(
        f"{stack.url}/v1/webhooks/stripe",
        data=payload,
        headers={
            "Stripe-Signature": stripe_signature(payload, WEBHOOK_SECRET),
            "Content-Type": "application/json",
            "Connection": "close",
        },
        timeout=10,
    )
    return response.status_code


def test_the_counts_of_every_gunicorn_worker_add_up_in_each_scrape(web):
    stack, metrics_dir = web
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(15):
            batch = range(sent, sent + 20)
            assert set(pool.map(lambda n: deliver_webhook(stack, n), batch)) == {200}
            sent += len(batch)
            if len(received_per_process(metrics_dir)) == GUNICORN_WORKERS:
                break

    per_process = received_per_process(metrics_dir)
    assert len(per_process) == GUNICORN_WORKERS, per_process
    assert sum(per_process.values()) == sent
    # Whichever worker answers the scrape, it reports the sum of both.
    for _ in range(6):
        samples = scrape(f"{stack.url}/metrics")
        assert value(samples, "billing_webhook_events_total", **RECEIVED) == sent


def _admin_key(stack: Stack) -> str:
    output = subprocess.run(
        [str(script_path("billing")), "api-keys", "create", "--admin", "--name", "metrics-e2e"],
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(output.strip().splitlines()[-1])["secret"])


def test_a_prefork_worker_serves_its_pool_processes_counts_on_its_metrics_port(web):
    stack, _ = web
    port = free_port()
    # As on ECS: only METRICS_PORT; the worker makes its own multiprocess directory.
    env = {**stack.env, "METRICS_PORT": str(port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    LOGS.mkdir(parents=True, exist_ok=True)
    with (LOGS / "metrics-worker-pdf.log").open("wb") as log:
        worker = subprocess.Popen(
            worker_command("pdf", f"pdf-metrics-{uuid.uuid4().hex[:6]}@%h", concurrency=2),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        http = retrying_client(_admin_key(stack))
        customer = http.post(
            f"{stack.url}/v1/customers",
            json={"name": "Acme", "email": "billing@acme.example", "currency": "eur"},
            timeout=10,
        ).json()
        invoices = 4
        for _ in range(invoices):
            draft = http.post(
                f"{stack.url}/v1/invoices",
                json={
                    "customer": customer["id"],
                    "collection_method": "send_invoice",
                    "lines": [{"description": "Seats", "quantity": 1, "unit_amount": 900}],
                },
                timeout=10,
            ).json()
            finalized = http.post(f"{stack.url}/v1/invoices/{draft['id']}/finalize", timeout=10)
            assert finalized.status_code == 200, finalized.text

        rendered = {"queue": "pdf", "task": "pdf.render_invoice", "outcome": "succeeded"}

        def all_rendered() -> Samples | None:
            try:
                samples = scrape(f"http://127.0.0.1:{port}/metrics")
            except requests.RequestException:
                return None  # not consuming yet
            return (
                samples if value(samples, "billing_tasks_total", **rendered) == invoices else None
            )

        samples = wait_for(all_rendered, timeout=120, interval=1)
        assert value(samples, "billing_pdf_render_seconds_count") == invoices
        assert (
            value(
                samples,
                "billing_task_duration_seconds_count",
                queue="pdf",
                task="pdf.render_invoice",
            )
            == invoices
        )
    finally:
        stop_process_groups([worker], timeout=20)
