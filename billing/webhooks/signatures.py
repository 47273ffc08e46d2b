"""Signing outgoing webhook bodies the way Stripe signs its own, so a receiver can check one
with code it may already have: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

The timestamp is inside what is signed, so a captured delivery cannot be replayed later
with a fresh time; a receiver refuses one signed too long ago. While a secret is rolled,
every active secret signs (one `v1=` each), so a receiver holding either the old or the new
secret accepts the delivery, and the roll needs no moment when both sides switch at once.

Pure: the standard library only, no framework, no clock unless the caller has none.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from secrets import token_urlsafe

SIGNATURE_HEADER = "Billing-Signature"
# The event's id: the same on every try of one event, so a receiver can drop a repeat.
EVENT_ID_HEADER = "Idempotency-Key"

_SCHEME = "v1"


def new_secret() -> str:
    """A signing secret for one endpoint. The prefix marks it as one, so a leaked secret is
    recognised for what it is, by a person or a secret scanner."""
    return "whsec_" + token_urlsafe(32)


def signature_header(body: bytes, secrets: Sequence[str], timestamp: int) -> str:
    """The header value for `body` sent at `timestamp` (Unix seconds), one signature per
    secret, in the order given."""
    if isinstance(secrets, str):
        # A lone string is a sequence too: each character would sign, none correctly.
        raise TypeError("secrets is a sequence of secrets, not one secret")
    if not secrets or not all(secrets):
        raise ValueError("every delivery is signed, and by non-empty secrets")
    signatures = (f"{_SCHEME}={_digest(secret, timestamp, body)}" for secret in secrets)
    return ",".join((f"t={timestamp}", *signatures))


def verify(
    body: bytes,
    header: str,
    secret: str,
    *,
    tolerance_seconds: int = 300,
    now: int | None = None,
) -> bool:
    """What a receiver does: True when one of the header's signatures is `secret`'s over
    exactly these bytes, and the header's timestamp is within `tolerance_seconds` of now
    (either side, so a clock a little ahead of the sender's still accepts). A header that
    does not parse verifies nothing."""
    parsed = _parse(header)
    if parsed is None or not secret:
        return False
    timestamp, candidates = parsed
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = _digest(secret, timestamp, body).encode("ascii")
    # Every candidate is compared in constant time: how much of a forged signature was
    # right must not show in how long the refusal took.
    return any(hmac.compare_digest(expected, candidate.encode("ascii")) for candidate in candidates)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode("ascii") + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def _parse(header: str) -> tuple[int, list[str]] | None:
    """(timestamp, v1 signatures), or None when the header is not one we would send.
    Other schemes are skipped, as Stripe's receivers skip them: a later scheme can be
    added beside v1 without breaking a receiver that only knows v1."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            return None
        if key == "t":
            # isdigit alone accepts other scripts' digits, and int() signs and underscores.
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return None
            timestamp = int(value)
        elif key == _SCHEME:
            if not _is_hex_digest(value):
                return None
            candidates.append(value)
    if timestamp is None or not candidates:
        return None
    return timestamp, candidates


def _is_hex_digest(value: str) -> bool:
    return len(value) == 2 * hashlib.sha256().digest_size and all(
        char in "0123456789abcdef" for char in value
    )
