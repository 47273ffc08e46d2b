"""The process commands of the service, as `make run` and the end-to-end tests start them.

They are the same commands the ECS task definitions run; only the listen address, the
control socket and the names differ locally.
"""

from __future__ import annotations

from pathlib import Path

from billing.platform.jobs import QUEUES as JOB_QUEUES
from devstack.servers import script_path

QUEUES = JOB_QUEUES  # one worker per queue
# The billing queue's tasks wait on Stripe and PostgreSQL, so threads serve it with far
# less CPU per task than forked processes (no per-task IPC with a pool child). Each task
# runs in an app context of its own, whose scoped session is its own. Other queues keep
# Celery's default (prefork): rendering PDFs is CPU-bound.
DEFAULT_POOLS = {"billing": "threads"}
# Mingle makes every starting worker wait a second for its neighbours' revoked task ids, and
# gossip has each worker read every other worker's events: we revoke nothing and read no
# events, so both only slow a restart (a killed worker comes back a second sooner) and add
# broker traffic. Heartbeats stay on: Flower shows workers by them.
WORKER_FLAGS = ("--without-mingle", "--without-gossip")


def web_command(
    port: int, control_socket: Path, *, workers: int = 2, threads: int = 4
) -> list[str]:
    return [
        str(script_path("gunicorn")),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        # gunicorn's default control socket (~/.gunicorn/gunicorn.ctl) is one per user,
        # so two gunicorns (make run and the e2e tests) would fight over it.
        "--control-socket",
        str(control_socket),
        "billing:create_app()",
    ]


def worker_command(
    queue: str, node_name: str, *, concurrency: int = 2, pool: str | None = None
) -> list[str]:
    pool = pool or DEFAULT_POOLS.get(queue)
    pool_args = ["--pool", pool] if pool else []
    return [
        str(script_path("celery")),
        "-A",
        "workers",
        "worker",
        "-Q",
        queue,
        "-n",
        node_name,
        "--concurrency",
        str(concurrency),
        *pool_args,
        *WORKER_FLAGS,
    ]


def beat_command() -> list[str]:
    # The schedule lives in Redis with the lock that keeps a second beat idle; no file.
    scheduler = "workers.beat:BillingRedBeatScheduler"
    return [str(script_path("celery")), "-A", "workers", "beat", "-S", scheduler]
