"""The container health check (deploy/healthcheck.py, `billing-healthcheck` in the image)
against the real thing for each role: the Flask app over HTTP for web, a real Celery
worker and a real beat process writing their heartbeat file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from devstack.commands import beat_command, worker_command

ROOT = Path(__file__).resolve().parents[2]
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def healthcheck(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("BILLING_ROLE", "HEARTBEAT_FILE")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {predicate}")
        time.sleep(0.2)


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    processes: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"process-{len(processes)}.log").open("wb")
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_web_is_healthy_while_the_app_answers_healthz_and_unhealthy_once_it_stops(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = str(server.server_port)
    try:
        answered = healthcheck(BILLING_ROLE="web", PORT=port)
        assert answered.returncode == 0, answered.stdout
        assert answered.stdout.startswith("healthy:") and "/healthz: HTTP 200" in answered.stdout
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
    refused = healthcheck(BILLING_ROLE="web", PORT=port)
    assert refused.returncode == 1
    assert refused.stdout.startswith("unhealthy:") and f"127.0.0.1:{port}/healthz" in refused.stdout


def test_a_running_worker_keeps_its_heartbeat_fresh_and_goes_stale_when_it_stops(
    service_env, redis_client, tmp_path, start_process
):
    heartbeat = tmp_path / "heartbeat"
    env = {**os.environ, **service_env, "HEARTBEAT_FILE": str(heartbeat)}
    worker = start_process(worker_command("mail", f"health-{os.getpid()}@%h"), env)

    wait_for(heartbeat.exists)
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first, timeout=15)  # touched again and again
    fresh = healthcheck(BILLING_ROLE="worker", HEARTBEAT_FILE=str(heartbeat))
    assert fresh.returncode == 0, fresh.stdout
    assert "(fresh, limit 60 s)" in fresh.stdout

    stop(worker)
    time.sleep(2.5)
    stale = healthcheck(
        BILLING_ROLE="worker", HEARTBEAT_FILE=str(heartbeat), HEARTBEAT_MAX_AGE_SECONDS="2"
    )
    assert stale.returncode == 1
    assert "stale, limit 2 s" in stale.stdout


def test_beat_touches_its_heartbeat_at_every_tick(
    service_env, redis_client, tmp_path, start_process
):
    heartbeat = tmp_path / "heartbeat"
    env = {**os.environ, **service_env, "HEARTBEAT_FILE": str(heartbeat)}
    start_process(beat_command(), env)

    wait_for(heartbeat.exists)
    first = heartbeat.stat().st_mtime
    wait_for(lambda: heartbeat.stat().st_mtime > first, timeout=15)
    fresh = healthcheck(BILLING_ROLE="beat", HEARTBEAT_FILE=str(heartbeat))
    assert fresh.returncode == 0, fresh.stdout


def test_a_worker_without_a_heartbeat_file_is_unhealthy_and_says_where_it_looked(tmp_path):
    missing = tmp_path / "never-written"
    result = healthcheck(BILLING_ROLE="worker", HEARTBEAT_FILE=str(missing))
    assert result.returncode == 1
    assert result.stdout.startswith(f"unhealthy: no heartbeat at {missing}")


def test_an_unknown_role_is_a_clear_error_and_a_one_off_task_has_nothing_to_check():
    unknown = healthcheck(BILLING_ROLE="wroker")
    assert unknown.returncode == 1
    assert "BILLING_ROLE must be one of web, worker, beat, migrate, got 'wroker'" in unknown.stdout
    assert healthcheck(BILLING_ROLE="migrate").returncode == 0


def test_help_documents_the_exit_codes():
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "0 healthy, 1 unhealthy" in result.stdout
