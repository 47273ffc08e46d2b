"""A worker's Flask app: the services' adapters without the HTTP side, for a quicker boot."""

from __future__ import annotations

import subprocess
import sys

import pytest

from billing import create_app
from billing.config import ConfigError

ADAPTERS = {"billing.publisher", "billing.stripe", "billing.mailer", "billing.storage"}


def test_a_worker_app_has_every_adapter_a_job_uses_and_no_api_routes(service_env):
    app = create_app(service_env, serve_http=False)

    assert ADAPTERS <= app.extensions.keys()
    assert [rule.rule for rule in app.url_map.iter_rules()] == ["/static/<path:filename>"]


def test_the_web_app_has_the_same_adapters_and_the_api(service_env):
    app = create_app(service_env)

    assert ADAPTERS <= app.extensions.keys()
    assert "/v1/invoices/<invoice_id>/pay" in {rule.rule for rule in app.url_map.iter_rules()}


def test_a_worker_with_every_task_loaded_never_imports_the_api_or_the_commands(service_env):
    # In a fresh interpreter, as `celery -A workers worker` starts: the app, then its tasks.
    script = (
        "import sys, workers\n"
        "celery = workers.get_celery()\n"
        "celery.loader.import_default_modules()\n"
        "assert 'billing.charge_invoice' in celery.tasks, sorted(celery.tasks)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('billing.api', 'billing.cli'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**service_env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_production_beat_starts_without_a_database_or_a_stripe_key(redis_url):
    beat = create_app(
        {"BILLING_ENV": "production", "BILLING_ROLE": "beat", "REDIS_URL": redis_url},
        serve_http=False,
    )

    assert "sqlalchemy" not in beat.extensions  # nothing to connect to, nothing pretended
    with pytest.raises(ConfigError, match="STRIPE_API_KEY is not set"):
        beat.extensions["billing.stripe"].retrieve_payment_intent("pi_123")


def test_every_task_has_a_soft_and_a_hard_time_limit_on_the_celery_app(celery_app, app):
    from billing.config import Settings
    from billing.platform import jobs

    settings: Settings = app.config["BILLING_SETTINGS"]
    ours = {name: task for name, task in celery_app.tasks.items() if not name.startswith("celery.")}
    assert jobs.RUN_DUNNING in ours and jobs.SEND_EMAIL in ours and jobs.RENDER_INVOICE_PDF in ours

    for name, task in ours.items():
        assert 0 < task.soft_time_limit < task.time_limit, name
    # A charge: two Stripe calls at most, each within the Stripe timeout.
    charge = ours[jobs.CHARGE_INVOICE]
    assert charge.soft_time_limit >= 2 * settings.stripe_timeout_seconds
    assert ours[jobs.SEND_EMAIL].soft_time_limit >= 3 * settings.mail["MAIL_TIMEOUT"]
    # A recorded job is never swept and sent again while it may still be running.
    outbox_jobs = (jobs.SYNC_CUSTOMER, jobs.CHARGE_INVOICE, jobs.REFUND_INVOICE)
    outbox_jobs += (jobs.PROCESS_STRIPE_EVENT, jobs.RENDER_INVOICE_PDF, jobs.SEND_EMAIL)
    for name in outbox_jobs:
        assert ours[name].time_limit < settings.outbox_lease_seconds, name
    # The long runs end before Redis hands their message to a second worker.
    visibility = celery_app.conf.broker_transport_options["visibility_timeout"]
    assert max(task.time_limit for task in ours.values()) < visibility
