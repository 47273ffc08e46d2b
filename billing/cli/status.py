"""`billing queues`, `billing outbox status` and `billing beat status`: how far behind the
work is, and who runs the schedule."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime

import click
from flask import current_app

from billing.cli.common import (
    EXIT_ATTENTION,
    EXIT_CODES_HELP,
    EXIT_OK,
    age,
    reports_unreachable,
    table,
    utc,
)


@click.command(
    "queues",
    help=(
        "Each queue: messages waiting in the broker and how long the oldest has waited, "
        "and the outbox's unfinished jobs for it and the age of the oldest (which also "
        "counts jobs the broker lost and the sweeper has not sent again yet). Ages are "
        "measured on the database's clock.\n\n"
        "Exit status: 0 when read, " + EXIT_CODES_HELP
    ),
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@reports_unreachable
def queues_command(as_json: bool) -> None:
    from billing.operations.queues import database_now, queue_states

    states = queue_states()
    now = database_now()

    def seconds(moment: datetime | None) -> float | None:
        return None if moment is None else (now - moment).total_seconds()

    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "queue": state.name,
                        "depth": state.depth,
                        "oldest_message_age_seconds": seconds(state.oldest_message_sent_at),
                        "unfinished_jobs": state.unfinished_jobs,
                        "oldest_unfinished_age_seconds": seconds(
                            state.oldest_unfinished_created_at
                        ),
                    }
                    for state in states
                ],
                indent=2,
            )
        )
        return
    rows = [["queue", "depth", "oldest message", "unfinished jobs", "oldest unfinished"]]
    for state in states:
        rows.append(
            [
                state.name,
                str(state.depth),
                age(seconds(state.oldest_message_sent_at)),
                str(state.unfinished_jobs),
                age(seconds(state.oldest_unfinished_created_at)),
            ]
        )
    click.echo(table(rows))


@click.command(
    "status",
    help=(
        "Jobs by queue and state (unfinished, dead-lettered, failed), the oldest unfinished "
        "job, and the sweeper's view: unfinished jobs whose lease ran out, which it sends "
        "again on its next pass.\n\n"
        "Exit status: 0 when the sweeper keeps up, 1 when leases ran out longer ago than "
        "three sweeps (at least a minute): beat, which runs the sweeper, is down or the "
        "sweep fails; " + EXIT_CODES_HELP
    ),
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@reports_unreachable
def outbox_status_command(as_json: bool) -> None:
    from billing.operations.operations import STATES_SHOWN, outbox_status

    status = outbox_status()
    if as_json:
        document = asdict(status)
        document.update(
            dead_lettered=status.dead_lettered,
            failed=status.failed,
            sweeper_behind=status.sweeper_behind,
        )
        click.echo(json.dumps(document, indent=2))
    else:
        rows = [["queue", *STATES_SHOWN]]
        for queue, states in status.counts.items():
            rows.append([queue, *(str(states.get(state, 0)) for state in STATES_SHOWN)])
        click.echo(table(rows))
        oldest = status.oldest_unfinished
        if oldest is None:
            click.echo("oldest unfinished: none")
        else:
            click.echo(
                f"oldest unfinished: {oldest.id} {oldest.name} ({oldest.state}), "
                f"{age(oldest.age_seconds)} old"
            )
        click.echo(
            f"leases run out: {status.lease_expired}"
            + (
                f", the oldest {age(status.oldest_expired_seconds)} ago"
                if status.lease_expired
                else ""
            )
        )
        click.echo(
            f"dead-lettered: {status.dead_lettered}, failed: {status.failed}"
            + (" (billing dead-letters list)" if status.dead_lettered + status.failed else "")
        )
        if status.sweeper_behind:
            click.echo(
                f"sweeper: BEHIND, leases ran out more than {age(status.sweeper_grace_seconds)} "
                "ago: check beat (billing beat status)"
            )
        else:
            click.echo("sweeper: keeping up")
    raise SystemExit(EXIT_ATTENTION if status.sweeper_behind else EXIT_OK)


@click.group("beat", help="The scheduler: exactly one beat holds the lock in Redis.")
def beat_group() -> None:
    pass


@beat_group.command(
    "status",
    help=(
        "Who holds beat's lock in Redis (host, pid, start time, ECS task), how long the "
        "lock lives unrenewed, and when each schedule entry last ran (for one that never "
        "ran: when beat stored it) and runs next. A second beat waits on the lock and is "
        "not shown.\n\n"
        "Exit status: 0 when a beat holds the lock, 1 when none does (nothing is "
        "scheduled: no sweeper, no dunning), " + EXIT_CODES_HELP
    ),
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 3600),
    default=0,
    help="Wait up to this many seconds for a beat to hold the lock and report itself.",
)
@reports_unreachable
def beat_status(wait_seconds: float) -> None:
    from billing.adapters.beat_lock import LOCK_KEY, read_beat_state

    redis_url = current_app.config["BILLING_SETTINGS"].redis_url.get_secret_value()
    deadline = time.monotonic() + wait_seconds
    state = read_beat_state(redis_url)
    # A beat that just took the lock writes its report a moment later: wait for both.
    while not (state.lock_held and state.holder_matches_lock) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = read_beat_state(redis_url)
    if not state.lock_held:
        click.echo(f"lock {LOCK_KEY}: free: no beat holds it, so nothing is scheduled")
    else:
        ttl = f"{state.lock_ttl_seconds:.0f} s" if state.lock_ttl_seconds is not None else "?"
        click.echo(f"lock {LOCK_KEY}: held, {ttl} left unless renewed")
        holder = state.holder
        if holder is None:
            click.echo("holder: unknown (the holding beat has not reported itself yet)")
        else:
            where = f"{holder.get('hostname')} pid {holder.get('pid')}"
            task = f", ECS task {holder['ecs_task_arn']}" if holder.get("ecs_task_arn") else ""
            stale = "" if state.holder_matches_lock else " (stale: a report of an earlier lock)"
            click.echo(f"holder: beat on {where}, started {holder.get('started_at')}{task}{stale}")
    if state.entries:
        rows = [["entry", "task", "last run", "next due"]]
        for entry in state.entries:
            rows.append(
                [entry.name, entry.task or "?", utc(entry.last_run_at), utc(entry.next_due_at)]
            )
        click.echo(table(rows))
    else:
        click.echo("schedule: none stored in Redis (beat writes it when it takes the lock)")
    raise SystemExit(EXIT_OK if state.lock_held else EXIT_ATTENTION)
