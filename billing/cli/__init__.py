"""The `billing` command: everything an operator does, each with --help and a clear exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from flask import Flask
from flask.cli import FlaskGroup

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    # stdout as it is now: Alembic's default is the one at its import, which a caller
    # capturing the command's output (click's runner) never sees.
    config = Config(str(PROJECT_ROOT / "alembic.ini"), stdout=sys.stdout)
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    if database_url:
        config.attributes["database_url"] = database_url
    return config


@click.group("db", help="Database schema (Alembic).")
def db_group() -> None:
    pass


@db_group.command("upgrade", help="Apply migrations up to REVISION (default: head).")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    from alembic import command
    from flask import current_app

    command.upgrade(alembic_config(current_app.config["SQLALCHEMY_DATABASE_URI"]), revision)
    click.echo(f"database upgraded to {revision}")


@db_group.command("downgrade", help="Revert migrations down to REVISION.")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    from alembic import command
    from flask import current_app

    command.downgrade(alembic_config(current_app.config["SQLALCHEMY_DATABASE_URI"]), revision)
    click.echo(f"database downgraded to {revision}")


@db_group.command("current", help="Show the database's current revision.")
def db_current() -> None:
    from alembic import command
    from flask import current_app

    command.current(alembic_config(current_app.config["SQLALCHEMY_DATABASE_URI"]))


@click.group("api-keys", help="API keys for the REST API.")
def api_keys_group() -> None:
    pass


@api_keys_group.command(
    "create",
    help=(
        "Create a key; its secret is printed once, as JSON. Say whom it is for: --customer "
        "ID (that customer's data only) or --admin (every customer's). Exit status 2 "
        "without either, or with both."
    ),
)
@click.option("--customer", "customer_id", default=None, help="Limit the key to this customer.")
@click.option("--admin", is_flag=True, help="A key that reads and changes every customer.")
@click.option("--name", default="unnamed", show_default=True, help="A label for the key.")
def api_keys_create(customer_id: str | None, admin: bool, name: str) -> None:
    from billing.access.api_keys import create_api_key
    from billing.platform.errors import NotFound

    # An admin key sees every customer: it is never what a forgotten option gives.
    if admin and customer_id is not None:
        raise click.UsageError("--admin and --customer exclude each other: give one")
    if not admin and customer_id is None:
        raise click.UsageError(
            "say whom the key is for: --customer ID (one customer's data) or --admin "
            "(every customer's)"
        )
    try:
        key, secret = create_api_key(name, customer_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        json.dumps({"id": key.id, "name": key.name, "customer": key.customer_id, "secret": secret})
    )


@api_keys_group.command("revoke", help="Revoke a key by its id (key_...).")
@click.argument("key_id")
def api_keys_revoke(key_id: str) -> None:
    from billing.access.api_keys import revoke_api_key
    from billing.platform.errors import NotFound

    try:
        key = revoke_api_key(key_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"revoked {key.id} ({key.name})")


@api_keys_group.command("list", help="List keys (never their secrets).")
def api_keys_list() -> None:
    from billing.access.api_keys import list_api_keys

    for key in list_api_keys():
        state = "revoked" if key.revoked_at else "active"
        scope = key.customer_id or "admin"
        click.echo(f"{key.id}\t{key.secret_prefix}…\t{scope}\t{state}\t{key.name}")


@click.group("outbox", help="Recorded follow-up jobs.")
def outbox_group() -> None:
    pass


@outbox_group.command("sweep", help="Publish again every unfinished job whose lease ran out.")
def outbox_sweep() -> None:
    from billing.platform.outbox import sweep

    click.echo(f"republished {sweep()} jobs")


@click.group("dead-letters", help="Jobs that gave up (dead-lettered) or failed for good.")
def dead_letters_group() -> None:
    pass


@dead_letters_group.command(
    "list", help="List dead-lettered and failed jobs, newest first (exit status 0)."
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
def dead_letters_list(limit: int) -> None:
    from billing.platform.outbox import list_dead_letters

    jobs = list_dead_letters(limit)
    if not jobs:
        click.echo("no dead-lettered or failed jobs")
        return
    for job in jobs:
        error = (job.last_error or "").replace("\n", " ")[:100]
        click.echo(
            f"{job.id}\t{job.state}\t{job.name}\t{json.dumps(job.args)}\t"
            f"attempts={job.attempts}\t{job.finished_at:%Y-%m-%d %H:%M:%S}\t{error}"
        )


@dead_letters_group.command(
    "show",
    help="Everything recorded about one job (any job), as JSON. Exit status 1: no such job.",
)
@click.argument("job_id")
def dead_letters_show(job_id: str) -> None:
    from billing.platform.outbox import get_job
    from billing.views.serializers import job_out

    job = get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    click.echo(job_out(job, error_detail=True).model_dump_json(indent=2))


@dead_letters_group.command(
    "replay",
    help=(
        "Run a dead-lettered or failed job again, with a fresh set of attempts (safe: every "
        "job is idempotent through the ledger).\n\n"
        "Exit status: 0 when replayed (with --wait: succeeded), 1 when there is no such job, "
        "it is not dead-lettered or failed, or with --wait when it did not succeed in time."
    ),
)
@click.argument("job_id")
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 3600),
    default=0,
    help="Wait up to this many seconds for a worker to finish it.",
)
def dead_letters_replay(job_id: str, wait_seconds: float) -> None:
    from billing.operations.operations import wait_for_jobs
    from billing.platform.outbox import NotReplayable, replay

    try:
        job = replay(job_id)
    except NotReplayable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"replayed {job.id} ({job.name}); follow it with: billing dead-letters show {job.id}"
    )
    if wait_seconds:
        state = wait_for_jobs([job_id], wait_seconds).get(job_id, "missing")
        click.echo(f"{job_id}: {state}")
        if state != "succeeded":
            raise SystemExit(1)


@click.group("webhooks", help="Stripe webhook events as received.")
def webhooks_group() -> None:
    pass


@webhooks_group.command("list", help="Recent events; --failed for those whose processing failed.")
@click.option("--failed", is_flag=True, help="Only events whose processing failed.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
def webhooks_list(failed: bool, limit: int) -> None:
    from sqlalchemy import select

    from billing.extensions import db
    from billing.models import StripeEvent

    query = select(StripeEvent).order_by(StripeEvent.received_at.desc()).limit(limit)
    if failed:
        query = query.where(StripeEvent.status == "failed")
    events = list(db.session.scalars(query))
    if not events:
        click.echo("no failed events" if failed else "no events received")
    for event in events:
        error = (event.error or "")[:100]
        received = f"{event.received_at:%Y-%m-%d %H:%M:%S}"
        click.echo(f"{event.id}\t{event.type}\t{event.status}\t{received}\t{error}")


@webhooks_group.command(
    "replay",
    help="Apply a stored event again (it is idempotent). Exit status 1: no such event.",
)
@click.argument("event_id")
def webhooks_replay(event_id: str) -> None:
    from billing.platform.errors import PermanentJobError
    from billing.stripe_events.stripe_events import replay_event

    try:
        job_id = replay_event(event_id)
    except PermanentJobError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"replaying {event_id} as job {job_id}")


def register_cli(app: Flask) -> None:
    from billing.cli.invoices import invoices_group
    from billing.cli.reconcile import reconcile_command
    from billing.cli.status import beat_group, outbox_status_command, queues_command
    from billing.cli.webhook_deliveries import webhook_deliveries_group

    outbox_group.add_command(outbox_status_command)
    for command in (
        db_group,
        api_keys_group,
        outbox_group,
        dead_letters_group,
        webhooks_group,
        webhook_deliveries_group,
        invoices_group,
        reconcile_command,
        queues_command,
        beat_group,
    ):
        app.cli.add_command(command)


def _create_app() -> Flask:
    from billing import create_app
    from billing.config import stop_on_bad_settings

    # Flask's command loader would answer bad settings with a traceback, or with "no such
    # command" after their message.
    with stop_on_bad_settings():
        return create_app()


main = FlaskGroup(
    name="billing",
    create_app=_create_app,
    add_default_commands=False,
    add_version_option=False,
    help=(
        "Operate the billing service. Configuration comes from the environment (see README); "
        "runbooks in docs/runbooks/.\n\n"
        "Exit status of every command: 0 done (and nothing needs you), 1 done but something "
        "needs an operator (or refused), 2 a usage error, 3 PostgreSQL, Redis or Stripe did "
        "not answer (nothing was concluded)."
    ),
)
