import json

from billing.adapters.broker import queue_keys
from billing.extensions import db
from billing.models import ApiKey


def test_an_api_key_is_created_printed_once_and_stored_only_as_a_hash(app):
    result = app.test_cli_runner().invoke(args=["api-keys", "create", "--admin", "--name", "ops"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["name"] == "ops" and printed["customer"] is None
    stored = db.session.get(ApiKey, printed["id"])
    assert printed["secret"] not in (stored.secret_hash, stored.secret_prefix)
    assert printed["secret"].startswith(stored.secret_prefix)
    listed = app.test_cli_runner().invoke(args=["api-keys", "list"]).output
    assert printed["id"] in listed and printed["secret"] not in listed


def test_a_customer_key_needs_an_existing_customer(app, make_customer):
    runner = app.test_cli_runner()
    missing = runner.invoke(args=["api-keys", "create", "--customer", "cus_nope"])
    assert missing.exit_code != 0
    assert "no customer cus_nope" in missing.output
    customer = make_customer()
    made = runner.invoke(args=["api-keys", "create", "--customer", customer["id"]])
    assert json.loads(made.output)["customer"] == customer["id"]


def test_a_key_without_admin_or_customer_is_refused_with_a_usage_error(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["api-keys", "create", "--name", "ops"])
    assert result.exit_code == 2
    assert "--customer ID" in result.output and "--admin" in result.output
    assert db.session.query(ApiKey).count() == 0


def test_a_key_for_both_admin_and_a_customer_is_refused(app, make_customer):
    customer = make_customer()
    before = db.session.query(ApiKey).count()
    result = app.test_cli_runner().invoke(
        args=["api-keys", "create", "--admin", "--customer", customer["id"]]
    )
    assert result.exit_code == 2
    assert "exclude each other" in result.output
    assert db.session.query(ApiKey).count() == before


def test_revoking_an_unknown_key_fails_with_a_clear_message(app):
    result = app.test_cli_runner().invoke(args=["api-keys", "revoke", "key_nope"])
    assert result.exit_code == 1
    assert "no API key key_nope" in result.output


def test_a_revoked_key_is_refused_by_the_api(app, client):
    runner = app.test_cli_runner()
    created = json.loads(runner.invoke(args=["api-keys", "create", "--admin"]).output)
    assert runner.invoke(args=["api-keys", "revoke", created["id"]]).exit_code == 0
    response = client.get("/v1/customers", headers={"Authorization": f"Bearer {created['secret']}"})
    assert response.status_code == 401


def test_a_dead_lettered_job_is_listed_shown_and_replayed(app, make_customer, redis_client):
    from sqlalchemy import update

    from billing.models import OutboxJob

    customer = make_customer()
    db.session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == customer["sync_job"])
        .values(
            state="dead_lettered",
            attempts=8,
            last_error="Stripe unavailable",
            finished_at=db.func.now(),
        )
    )
    db.session.commit()
    redis_client.flushdb()
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["dead-letters", "list"])
    assert listed.exit_code == 0
    assert customer["sync_job"] in listed.output and "Stripe unavailable" in listed.output
    shown = json.loads(runner.invoke(args=["dead-letters", "show", customer["sync_job"]]).output)
    assert shown["state"] == "dead_lettered"
    replayed = runner.invoke(args=["dead-letters", "replay", customer["sync_job"]])
    assert replayed.exit_code == 0, replayed.output
    job = db.session.get(OutboxJob, customer["sync_job"])
    db.session.refresh(job)
    assert (job.state, job.attempts) == ("sent", 0)
    assert sum(redis_client.llen(k) for k in queue_keys("billing")) == 1  # published again
    again = runner.invoke(args=["dead-letters", "replay", customer["sync_job"]])
    assert again.exit_code == 1 and "only dead_lettered, failed replay" in again.output
    assert "no dead-lettered" in runner.invoke(args=["dead-letters", "list"]).output
