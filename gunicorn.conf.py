"""gunicorn settings, read from the working directory by `gunicorn "billing:create_app()"`.

Every value can be overridden on the command line; the ECS task definition relies on
these defaults and on PORT / WEB_CONCURRENCY / WEB_THREADS from the environment.
"""

import os
from typing import Any

from billing.metrics_multiprocess import ensure_multiprocess_dir, remove_stale_files

# Before the app (and prometheus_client) is imported in any worker: every worker then keeps
# its counters in a file of this directory, and /metrics sums them all. Re-reading this file
# (HUP) finds the variable set and keeps the directory. One made here goes at exit.
METRICS_DIR = ensure_multiprocess_dir("web")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# Shorter than the idempotency lease (60 s): a request still holding its key is alive.
timeout = 30
graceful_timeout = 20
# gunicorn's own lines as JSON too, like every other line the service writes.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "billing.logging.json_formatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}


def on_starting(server: Any) -> None:
    remove_stale_files(METRICS_DIR)


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's counters stay counted (its file stays); only its live gauges go.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
