"""`billing invoices`: send an invoice's email again, render its PDF again."""

from __future__ import annotations

from datetime import datetime

import click

from billing.cli.common import (
    EXIT_ATTENTION,
    EXIT_CODES_HELP,
    EXIT_OK,
    MOMENT,
    reports_unreachable,
)
from billing.notifications.kinds import KINDS


@click.group("invoices", help="Invoices' emails and PDFs, again on request.")
def invoices_group() -> None:
    pass


@invoices_group.command(
    "resend-email",
    help=(
        "Send INVOICE_ID's email of --kind again, to the customer's addresses as they are "
        "now (fix them first with PATCH /v1/customers/{id}). It is a new message with a "
        "delivery key and Message-ID of its own, so the dedupe of the first one does not "
        "swallow it. Refused when the kind does not fit the invoice's state (a receipt for "
        "an unpaid invoice) or no such email was ever recorded.\n\n"
        "Exit status: 0 when recorded (with --wait: sent), 1 when refused, or with --wait "
        "when not sent in time or refused by the mail server, " + EXIT_CODES_HELP
    ),
)
@click.argument("invoice_id")
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    default="invoice_issued",
    show_default=True,
    help="Which email.",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 3600),
    default=0,
    help="Wait up to this many seconds for the mail worker to send it.",
)
@reports_unreachable
def resend_email(invoice_id: str, kind: str, wait_seconds: float) -> None:
    from billing.operations.operations import delivery_states, resend_invoice_email, wait_for_jobs
    from billing.platform.errors import ServiceError

    try:
        resend = resend_invoice_email(invoice_id, kind)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"queued {kind} for {invoice_id} (resend {resend.number}) to "
        f"{', '.join(resend.recipients)}: deliveries {', '.join(resend.deliveries)}"
    )
    if not wait_seconds:
        click.echo(f"follow each with: billing dead-letters show {resend.job_ids[0]}")
        raise SystemExit(EXIT_OK)
    wait_for_jobs(resend.job_ids, wait_seconds)
    states = delivery_states(resend.deliveries)
    for delivery_id in resend.deliveries:
        status, error = states.get(delivery_id, ("missing", None))
        click.echo(f"{delivery_id}: {status}" + (f" ({error})" if error else ""))
    all_sent = all(states.get(d, ("", None))[0] == "sent" for d in resend.deliveries)
    raise SystemExit(EXIT_OK if all_sent else EXIT_ATTENTION)


@invoices_group.command(
    "rerender",
    help=(
        "Render the PDF of each INVOICE_ID again (or of every invoice finalized since "
        "--finalized-since), even when nothing the document shows has changed: after a "
        "fix to the template, its fonts or the renderer. A document whose bytes differ "
        "is stored as a new version (older versions are kept, as the customer received "
        "them); identical bytes are not stored twice. No email goes out for it.\n\n"
        "Exit status: 0 when recorded (with --wait: rendered), 1 when refused (no such "
        "invoice, a draft) or with --wait when a render failed or did not finish in "
        "time, " + EXIT_CODES_HELP
    ),
)
@click.argument("invoice_ids", nargs=-1)
@click.option(
    "--finalized-since",
    type=MOMENT,
    default=None,
    help="Every invoice finalized since then (7d, 2025-06-01...), up to --limit.",
)
@click.option("--limit", type=click.IntRange(1, 100000), default=1000, show_default=True)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 3600),
    default=0,
    help="Wait up to this many seconds for the pdf worker to render them.",
)
@reports_unreachable
def rerender(
    invoice_ids: tuple[str, ...], finalized_since: datetime | None, limit: int, wait_seconds: float
) -> None:
    from billing.operations.operations import (
        invoices_finalized_since,
        latest_versions,
        rerender_invoices,
        wait_for_jobs,
    )
    from billing.platform.errors import ServiceError

    chosen = list(invoice_ids)
    if finalized_since is not None:
        chosen += invoices_finalized_since(finalized_since, limit)
    if not chosen:
        raise click.UsageError("name at least one INVOICE_ID, or --finalized-since")
    try:
        requested = rerender_invoices(chosen)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    for item in requested:
        click.echo(f"{item.invoice_id}: render recorded as job {item.job_id}")
    if not wait_seconds:
        raise SystemExit(EXIT_OK)
    states = wait_for_jobs([item.job_id for item in requested], wait_seconds)
    versions = latest_versions([item.invoice_id for item in requested])
    ok = True
    for item in requested:
        state = states.get(item.job_id, "missing")
        version = versions.get(item.invoice_id, 0)
        if state != "succeeded":
            ok = False
            click.echo(
                f"{item.invoice_id}: render {state} (billing dead-letters show {item.job_id})"
            )
        elif version > item.latest_version:
            click.echo(f"{item.invoice_id}: stored as version {version}")
        else:
            click.echo(f"{item.invoice_id}: unchanged, the same bytes as version {version}")
    raise SystemExit(EXIT_OK if ok else EXIT_ATTENTION)
