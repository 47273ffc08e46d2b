"""What every benchmark needs around the thing it measures: a scratch database on the
PostgreSQL server it was given, plain psycopg2 connections for seeding and baselines, and a
job publisher that publishes nothing (the broker is never what a bench measures unless it
starts real workers). Not a benchmark itself: `make bench` skips files starting with `_`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import make_url


def connect(url: str, *, autocommit: bool = True) -> Any:
    """A psycopg2 connection from a SQLAlchemy URL (host, port, socket folder, password)."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"user": parsed.username or "postgres", "dbname": parsed.database}
    if parsed.password:
        kwargs["password"] = parsed.password
    if parsed.host:
        kwargs["host"] = parsed.host
    if parsed.port:
        kwargs["port"] = parsed.port
    if "host" in parsed.query:
        kwargs["host"] = parsed.query["host"]
    connection = psycopg2.connect(**kwargs)
    connection.autocommit = autocommit
    return connection


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A new empty database on the server, yielded as its URL, dropped afterwards (with
    whatever connections a crashed run left open)."""
    name = f"billing_bench_{uuid.uuid4().hex[:8]}"
    with closing(connect(server_url)) as connection:
        connection.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with closing(connect(server_url)) as connection:
            connection.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_database(state: Path) -> Iterator[str]:
    """A scratch database migrated to head, on DATABASE_URL or the machine's PostgreSQL, else
    on an embedded one kept under `state`; yielded as its URL, all of it gone afterwards."""
    from alembic import command

    from billing.cli import alembic_config
    from devstack.servers import resolve_database_url

    server_url, embedded = resolve_database_url(state, allow_local=True)
    try:
        with scratch_database(server_url) as url:
            command.upgrade(alembic_config(url), "head")
            yield url
    finally:
        if embedded is not None:
            embedded.stop()


class NoBroker:
    """Jobs stay recorded in the outbox (or are run in-process by the bench); nothing is
    published."""

    def publish(self, job_id: str, job_name: str, request_id: str | None) -> None:
        return None

    def ping(self) -> None:
        return None


def run_e2e_test(root: Path, test_file: str, env: dict[str, str]) -> tuple[int, str, float]:
    """Run one end-to-end test file as `make test` would, with `env` on top of this
    process's; returns its exit code, the line it printed that starts with the file's
    summary prefix (or the tail of its output), and the wall time."""
    import os
    import re
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test_file],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    summary = re.search(r"^(chaos|rate limits): .*$", result.stdout, re.MULTILINE)
    return result.returncode, summary.group(0) if summary else result.stdout[-3000:], elapsed


def process_tree_cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by a process and its children (gunicorn's and celery's forked
    workers); 0 for no process or one gone."""
    import psutil

    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def matching_processes_cpu_seconds(*needles: str) -> float:
    """CPU time used so far by the live processes whose command line holds every needle:
    PostgreSQL names each backend after its database (`postgres: ... dbname host state`),
    so one database's backends can be told from another's on a shared server."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            command = " ".join(proc.info["cmdline"] or ())
            if all(needle in command for needle in needles):
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total
