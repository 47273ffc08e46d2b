"""The Celery side: `celery -A workers worker -Q billing|pdf|mail` and `celery -A workers beat`.

The Celery app is built on first use, not at import, so that importing a task module
never reads the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

_app: Celery | None = None


def get_celery() -> Celery:
    global _app
    if _app is None:
        if os.environ.get("METRICS_PORT"):
            # Before anything imports prometheus_client: a worker's pool processes count
            # in files that the worker's metrics endpoint sums (workers/metrics.py).
            from billing.platform.metrics_multiprocess import ensure_multiprocess_dir

            ensure_multiprocess_dir("celery")
        from workers.app import make_celery

        _app = make_celery()
    return _app


def __getattr__(name: str) -> Any:
    # `celery -A workers` looks for an attribute named `celery` (or `app`). Celery would
    # show bad settings inside a traceback of its own; they stop the process plainly.
    if name in ("celery", "app"):
        from billing.config import stop_on_bad_settings

        with stop_on_bad_settings():
            return get_celery()
    raise AttributeError(name)
