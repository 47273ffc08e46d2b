"""gunicorn settings, read from the working directory by `gunicorn "billing:create_app()"`.

Every value can be overridden on the command line; the ECS task definition relies on
these defaults and on PORT / WEB_CONCURRENCY / WEB_THREADS from the environment.
"""

from typing import Any

from billing.config import Settings, stop_on_bad_settings
from billing.platform.metrics_multiprocess import ensure_multiprocess_dir, remove_stale_files

# Every setting is checked here, in the master: bad ones stop gunicorn before it listens,
# with one message, instead of each worker failing to boot in turn.
with stop_on_bad_settings():
    SETTINGS = Settings.from_env()

# Before the app (and prometheus_client) is imported in any worker: every worker then keeps
# its counters in a file of this directory, and /metrics sums them all. Re-reading this file
# (HUP) finds the variable set and keeps the directory. One made here goes at exit.
METRICS_DIR = ensure_multiprocess_dir("web")

bind = f"0.0.0.0:{SETTINGS.port}"
workers = SETTINGS.web_concurrency
threads = SETTINGS.web_threads
# Shorter than the idempotency lease (60 s): a request still holding its key is alive.
timeout = 30
graceful_timeout = 20
# gunicorn's own lines as JSON too, like every other line the service writes.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "billing.platform.logging.json_formatter"}},
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
