"""Signing webhook deliveries the way Stripe does (t=<unix time>,v1=<HMAC-SHA256>)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any


def stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event(
    type_: str, obj: dict[str, Any], *, created: int | None = None, id_: str | None = None
) -> bytes:
    return json.dumps(
        {
            "id": id_ or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": type_,
            "created": created or int(time.time()),
            "data": {"object": obj},
        }
    ).encode()
