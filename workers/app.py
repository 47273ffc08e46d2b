"""The Celery app, Flask's celery_init_app pattern: every task runs in an app context."""

from __future__ import annotations

import importlib
from typing import Any

from celery import Celery, Task, signals
from flask import Flask

from billing import create_app
from billing.adapters.beat_lock import REDBEAT_KEY_PREFIX
from billing.adapters.task_queue import celery_settings, task_time_limits
from billing.config import Settings
from billing.extensions import db
from billing.platform.logging import bind_context, clear_context, configure_logging
from workers import heartbeat
from workers import metrics as _metrics  # noqa: F401 - its signal handlers serve the metrics
from workers.liveness import WORKER_ID
from workers.routing import route_by_name
from workers.schedule import beat_schedule

TASK_MODULES = ["workers.billing", "workers.pdf", "workers.mail", "workers.webhooks"]
_flask_apps: list[Flask] = []


def make_celery(flask_app: Flask | None = None) -> Celery:
    app: Flask = flask_app or create_app(serve_http=False)
    settings: Settings = app.config["BILLING_SETTINGS"]

    class FlaskTask(Task):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                clear_context()
                headers = getattr(self.request, "headers", None) or {}
                bind_context(
                    task_id=self.request.id,
                    task_name=self.name,
                    request_id=getattr(self.request, "request_id", None)
                    or headers.get("request_id"),
                )
                try:
                    return self.run(*args, **kwargs)
                finally:
                    db.session.remove()
                    clear_context()

    celery = Celery(app.name, task_cls=FlaskTask, include=TASK_MODULES)
    redis_url = settings.redis_url.get_secret_value()
    celery.conf.update(celery_settings(redis_url))
    celery.conf.task_annotations = task_time_limits(settings)
    celery.conf.update(
        task_routes=(route_by_name,),
        beat_schedule=beat_schedule(settings),
        # The schedule and the one-beat lock live in Redis (celery-redbeat): a second beat
        # blocks on the lock until the holder stops renewing it. Beat wakes at least three
        # times per lock period to renew it.
        beat_scheduler="workers.beat:BillingRedBeatScheduler",
        redbeat_redis_url=redis_url,
        redbeat_key_prefix=REDBEAT_KEY_PREFIX,
        redbeat_lock_timeout=settings.beat_lock_timeout_seconds,
        # Its own client options (redbeat no longer borrows the broker's): a Redis that
        # stops answering must fail beat's tick, not hang it past its lock's timeout.
        redbeat_redis_options={"socket_connect_timeout": 5, "socket_timeout": 10},
        beat_max_loop_interval=max(1, min(5, settings.beat_lock_timeout_seconds // 3)),
        worker_hijack_root_logger=False,
        task_create_missing_queues=True,
        billing_heartbeat_file=settings.heartbeat_file,
    )
    celery.set_default()
    # Register the tasks now (not at worker start only), so any process can run them.
    for module in TASK_MODULES:
        importlib.import_module(module)
    celery.finalize()
    app.extensions["celery"] = celery
    _flask_apps.append(app)
    return celery


@signals.setup_logging.connect
def _use_structlog(**_: Any) -> None:
    configure_logging(Settings.from_env().log_level)


@signals.heartbeat_sent.connect
def _touch_heartbeat_file(sender: Any, **_: Any) -> None:
    # Sent by the worker's event loop every two seconds while it is connected to the broker.
    heartbeat.touch(sender.eventer.app.conf.get("billing_heartbeat_file"))
    if _flask_apps:
        heartbeat.beat_in_registry(_flask_apps[-1].extensions["billing.broker_view"], WORKER_ID)


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Connections opened by the parent must not be shared by forked pool processes.
    for flask_app in _flask_apps:
        with flask_app.app_context():
            db.engine.dispose(close=False)
