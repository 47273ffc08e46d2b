"""Hosted invoice links: an invoice's number and an expiry, signed with HMAC-SHA256. Pure.

A link is `kid.payload.signature`, all URL-safe base64 but the key id. The payload names
the invoice by its number (printed on the invoice anyway, never an internal id) and either
a fixed expiry or none: a link without one lives while its invoice is open and
HOSTED_LINK_DAYS after it closes, which only the invoice can tell (see `expired`).

Keys rotate: the first of HOSTED_LINK_KEYS signs, each of them verifies, so that a new key
goes first and an old one is dropped once the links it signed may stop working.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class LinkKey:
    kid: str
    secret: bytes


@dataclass(frozen=True)
class LinkClaim:
    invoice_number: str
    # Seconds since the epoch; None: as long as the invoice's own closure allows.
    expires_at: int | None


class BadLink(Exception):
    """Not a link this service signed with a key it still holds: the page answers 404
    whatever the reason, so that a guesser learns nothing."""


def parse_keys(setting: str) -> tuple[LinkKey, ...]:
    """HOSTED_LINK_KEYS ("kid:secret,kid:secret"), already checked by the settings."""
    keys = []
    for entry in setting.split(","):
        kid, _, secret = entry.strip().partition(":")
        if kid and secret:
            keys.append(LinkKey(kid, secret.encode()))
    return tuple(keys)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: LinkKey, payload: str) -> str:
    message = f"{key.kid}.{payload}".encode()
    return _b64(hmac.new(key.secret, message, hashlib.sha256).digest())


def sign(invoice_number: str, keys: Sequence[LinkKey], *, expires_at: int | None = None) -> str:
    key = keys[0]
    payload = _b64(f"{invoice_number}~{expires_at or 0}".encode())
    return f"{key.kid}.{payload}.{_signature(key, payload)}"


def verify(token: str, keys: Sequence[LinkKey]) -> LinkClaim:
    """The claim of a link signed by one of `keys`; BadLink otherwise."""
    kid, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    key = next((k for k in keys if k.kid == kid), None)
    if key is None or not payload or not signature:
        raise BadLink("unknown key or malformed link")
    if not hmac.compare_digest(_signature(key, payload), signature):
        raise BadLink("bad signature")
    try:
        number, _, expiry = _unb64(payload).decode().rpartition("~")
        expires_at = int(expiry)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadLink("malformed payload") from exc
    if not number:
        raise BadLink("malformed payload")
    return LinkClaim(number, expires_at or None)


def expired(
    claim: LinkClaim, closed_at: datetime | None, now: datetime, days_after_close: int
) -> bool:
    """Past its own expiry if it carries one; else past `days_after_close` after the
    invoice was paid, voided or written off (an open invoice's link does not expire)."""
    if claim.expires_at is not None:
        return now.timestamp() >= claim.expires_at
    if closed_at is None:
        return False
    closed = closed_at if closed_at.tzinfo else closed_at.replace(tzinfo=UTC)
    return now >= closed + timedelta(days=days_after_close)


def fresh_expiry(closed_at: datetime | None, now: datetime, days_after_close: int) -> int | None:
    """The expiry a new link carries: none while the invoice is open (its closure will
    set it); for a closed invoice, the later of its usual end and `days_after_close` from
    now, so that a link asked for again works for as long."""
    if closed_at is None:
        return None
    closed = closed_at if closed_at.tzinfo else closed_at.replace(tzinfo=UTC)
    end = max(closed, now) + timedelta(days=days_after_close)
    return int(end.timestamp())
