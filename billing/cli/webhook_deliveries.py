"""`billing webhook-deliveries`: what was sent to an endpoint, and sending it again."""

from __future__ import annotations

import json
from datetime import datetime

import click

from billing.cli.common import EXIT_CODES_HELP, MOMENT, reports_unreachable


@click.group("webhook-deliveries", help="Deliveries of events to webhook endpoints: list, replay.")
def webhook_deliveries_group() -> None:
    pass


@webhook_deliveries_group.command(
    "list",
    help=(
        "An endpoint's deliveries, newest first, one JSON object per line with its tries. "
        f"Exit status 0; {EXIT_CODES_HELP}"
    ),
)
@click.option("--endpoint", "endpoint_id", required=True, help="The webhook endpoint's id.")
@click.option(
    "--state",
    type=click.Choice(["waiting", "pending", "succeeded", "failed", "canceled"]),
    default=None,
    help="Only deliveries in this state.",
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@reports_unreachable
def list_deliveries(endpoint_id: str, state: str | None, limit: int) -> None:
    from billing.platform.errors import NotFound
    from billing.views.serializers import webhook_delivery_out
    from billing.webhooks import deliveries

    try:
        page = deliveries.list_deliveries(
            endpoint_id, state=state, limit=limit, starting_after=None
        )
    except NotFound as exc:
        raise click.UsageError(str(exc)) from exc
    for delivery, tries in page.items:
        shown = webhook_delivery_out(delivery, tries)
        click.echo(json.dumps(shown.model_dump(mode="json"), sort_keys=True))


@webhook_deliveries_group.command(
    "replay",
    help=(
        "Send again one delivery (DELIVERY_ID), or every event of a range to an endpoint "
        "(--endpoint with --since and/or --until), signed anew, in sequence order per "
        "object. Events the endpoint never got (it was disabled, say) are sent too. "
        f"Prints how many were sent again. Exit status 0; {EXIT_CODES_HELP}"
    ),
)
@click.argument("delivery_id", required=False)
@click.option("--endpoint", "endpoint_id", default=None, help="Every event of a range to it.")
@click.option("--since", type=MOMENT, default=None, help="Events created at or after this.")
@click.option("--until", type=MOMENT, default=None, help="Events created at or before this.")
@reports_unreachable
def replay(
    delivery_id: str | None,
    endpoint_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> None:
    from billing.platform.errors import NotFound
    from billing.webhooks import deliveries

    if (delivery_id is None) == (endpoint_id is None):
        raise click.UsageError("give either a DELIVERY_ID or --endpoint with a range")
    if endpoint_id is not None and since is None and until is None:
        raise click.UsageError("--endpoint replays a range: give --since and/or --until")
    try:
        replayed = deliveries.replay(
            delivery_id=delivery_id, endpoint_id=endpoint_id, since=since, until=until
        )
    except NotFound as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(json.dumps({"replayed": len(replayed), "deliveries": replayed}))
