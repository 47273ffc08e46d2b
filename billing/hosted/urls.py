"""The address of an invoice's hosted page, for the API, the emails and the page itself."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Protocol

from billing.hosted import links
from billing.platform import clock, context


class Closable(Protocol):
    @property
    def paid_at(self) -> datetime | None: ...
    @property
    def voided_at(self) -> datetime | None: ...
    @property
    def marked_uncollectible_at(self) -> datetime | None: ...


def closed_at(invoice: Closable) -> datetime | None:
    """When the invoice stopped asking for money (paid, voided or written off): from then
    on its link lasts HOSTED_LINK_DAYS."""
    return invoice.paid_at or invoice.voided_at or invoice.marked_uncollectible_at


@lru_cache(maxsize=4)
def _parsed(setting: str) -> tuple[links.LinkKey, ...]:
    return links.parse_keys(setting)


def link_keys() -> tuple[links.LinkKey, ...]:
    return _parsed(context.settings().hosted_link_keys.get_secret_value())


def hosted_url(
    number: str | None, closed_at: datetime | None, *, fresh: bool = False
) -> str | None:
    """The hosted page of the invoice numbered `number`, or None for a draft or when hosted
    pages are off (HOSTED_LINK_KEYS or PUBLIC_BASE_URL unset). `closed_at`: when it was
    paid, voided or written off. `fresh`, for a message sent now: a closed invoice's link
    lasts HOSTED_LINK_DAYS from now rather than from its closing."""
    settings = context.settings()
    keys = link_keys()
    base = settings.hosted_base_url
    if not number or not keys or not base:
        return None
    expires_at = None
    if fresh:
        expires_at = links.fresh_expiry(closed_at, clock.now(), settings.hosted_link_days)
    token = links.sign(number, keys, expires_at=expires_at)
    return f"{base}/pay/{token}"
