"""A worker's Flask app: the services' adapters without the HTTP side, for a quicker boot."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

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
    from billing import jobs
    from billing.config import Settings

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


def _in_a_pool_thread(work):
    """Runs `work` in a thread of its own, as Celery's thread pool runs tasks; returns what
    it returned or raised, anything raised outside a task included."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["returned"] = work()
        except BaseException as exc:  # noqa: BLE001 - the test looks at whatever escaped
            outcome["raised"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return outcome


def test_a_task_in_the_thread_pool_is_stopped_at_its_soft_time_limit(celery_app):
    @celery_app.task(name="test.endless_loop", soft_time_limit=0.2)
    def endless_loop() -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "ran to the end"

    started = time.monotonic()
    outcome = _in_a_pool_thread(lambda: endless_loop.apply())

    assert isinstance(outcome["returned"].result, SoftTimeLimitExceeded)
    assert time.monotonic() - started < 5


def test_a_soft_time_limit_never_fires_after_its_task_has_ended(celery_app):
    # Tasks that end around their limit, some just before, some just after: each exception
    # must land inside its own task or not at all, never in what the thread runs next.
    @celery_app.task(name="test.busy_for", soft_time_limit=0.01)
    def busy_for(seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        return "done"

    def many_tasks_then_other_work() -> list[object]:
        durations = [0.005, 0.009, 0.01, 0.011, 0.015, 0.1] * 40
        results = [busy_for.apply(args=(seconds,)).result for seconds in durations]
        quiet_until = time.monotonic() + 0.3
        while time.monotonic() < quiet_until:
            pass
        return results

    outcome = _in_a_pool_thread(many_tasks_then_other_work)

    assert "raised" not in outcome, outcome
    results = outcome["returned"]
    assert set(map(type, results)) == {str, SoftTimeLimitExceeded}
