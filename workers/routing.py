"""Tasks are routed by name: a job's first name segment is its queue."""

from __future__ import annotations

from typing import Any

from billing.platform.jobs import queue_for


def route_by_name(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str] | None:
    try:
        return {"queue": queue_for(name)}
    except ValueError:
        return None  # Celery's own tasks (celery.*) keep their defaults
