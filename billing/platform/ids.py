"""Public identifiers: a Stripe-like prefix and a ULID, so ids sort by creation time.

Within one process they also sort in the order they were made, even within a millisecond
(where a plain ULID's random part would order them at random): lines created together keep
their order, since a collection such as an invoice's lines is ordered by id."""

import threading

from ulid import ULID

_lock = threading.Lock()
_last = 0


def new_id(prefix: str) -> str:
    global _last
    value = int(ULID())
    with _lock:
        if value <= _last:
            value = _last + 1  # same millisecond: one past the previous id
        _last = value
    return f"{prefix}_{str(ULID.from_int(value)).lower()}"
