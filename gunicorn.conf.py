"""gunicorn settings, read from the working directory by `gunicorn "billing:create_app()"`.

Every value can be overridden on the command line; the ECS task definition relies on
these defaults and on PORT / WEB_CONCURRENCY / WEB_THREADS from the environment.
"""

import os

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
