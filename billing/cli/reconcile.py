"""`billing reconcile`: our ledger against Stripe's PaymentIntents."""

from __future__ import annotations

import json
from datetime import datetime

import click

from billing.cli.common import (
    EXIT_ATTENTION,
    EXIT_CODES_HELP,
    EXIT_OK,
    MOMENT,
    reports_unreachable,
    utc,
)

RUNBOOK = "docs/runbooks/charged-twice.md"


@click.command(
    "reconcile",
    help=(
        "Compare our ledger with Stripe's PaymentIntents created in [--since, --until): "
        "duplicate charges (an invoice paid more than once), missing payments (succeeded "
        "on Stripe, not recorded here), charge attempts whose outcome is unknown, and "
        "payments naming an invoice we do not have. PaymentIntents without our metadata "
        "are counted and ignored.\n\n"
        "--fix adopts Stripe's truth for missing payments and unknown attempts, as a "
        "webhook would. It never creates a charge and never refunds one: a duplicate "
        f"is refunded by an operator ({RUNBOOK}).\n\n"
        "Exit status: 0 when nothing is left to look at, 1 when discrepancies remain "
        "(after --fix: those it could not fix; a duplicate stays until refunded), "
        + EXIT_CODES_HELP
    ),
)
@click.option(
    "--since",
    type=MOMENT,
    default="48h",
    show_default=True,
    help="Start of the range: 48h, 7d, 90m back, or an ISO date or date-time (UTC).",
)
@click.option("--until", type=MOMENT, default="now", show_default=True, help="End of the range.")
@click.option("--fix", is_flag=True, help="Adopt Stripe's truth where that is safe.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@reports_unreachable
def reconcile_command(since: datetime, until: datetime, fix: bool, as_json: bool) -> None:
    from billing.charging.reconciliation import KINDS, reconcile

    if since >= until:
        raise click.BadParameter(f"--since ({utc(since)}) must be before --until ({utc(until)})")
    report = reconcile(since, until, fix=fix)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        click.echo(
            f"Stripe PaymentIntents created {utc(report.since)} to {utc(report.until)}: "
            f"{report.intents_seen} seen, {report.intents_without_our_metadata} without our "
            "metadata (ignored)"
        )
        for finding in report.findings:
            state = "resolved" if finding.resolved else "OPEN"
            where = f"invoice {finding.invoice_id}"
            if finding.attempt_id:
                where += f" attempt {finding.attempt_id}"
            click.echo(f"{state:<9}{finding.kind:<18} {where}  {finding.amount} {finding.currency}")
            click.echo(f"         {finding.detail}")
            for intent in finding.payment_intents:
                recorded = "  (recorded as the invoice's payment)" if intent.recorded else ""
                click.echo(
                    f"         {intent.id}  {intent.status}  {intent.amount} {finding.currency}"
                    f"  refunded {intent.amount_refunded}{recorded}"
                )
            if finding.resolution:
                click.echo(f"         {finding.resolution}")
        if report.clean:
            click.echo("clean: no duplicate charge, missing payment or unknown attempt left")
        else:
            counts = ", ".join(
                f"{report.count(kind)} {kind}" for kind in KINDS if report.count(kind)
            )
            hint = (
                f"; refund duplicates by hand: {RUNBOOK}"
                if report.count("duplicate_charge")
                else ""
            )
            if not fix and any(
                f.kind in ("missing_payment", "unknown_attempt") for f in report.open_findings
            ):
                hint += "; --fix adopts Stripe's truth for missing payments and unknown attempts"
            click.echo(f"open: {counts}{hint}")
    raise SystemExit(EXIT_OK if report.clean else EXIT_ATTENTION)
