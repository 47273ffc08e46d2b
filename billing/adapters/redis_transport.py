"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu 5.7's Redis channel builds a new `redis.Redis` for every publish, every ack and every
message it takes (`Channel.conn_or_acquire`). redis-py 8 fills a case-insensitive table of
about 170 response callbacks in each client's constructor, so those throwaway clients cost
more CPU than the Redis commands they send, on every publish, ack and message taken.
A `redis.Redis` is safe to share between threads (it takes a pooled connection per
command, and each pipeline is a new object), so a channel may keep one.

Everything else is kombu's own: the same keys, the same visibility-timeout bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import connection as kombu_connection
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _kept_client: tuple[Any, Any] | None = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        kept = self._kept_client
        # A channel that reconnected has a new pool: its old client would use the old one.
        if kept is None or kept[0] is not pool:
            kept = (pool, self._create_client())
            self._kept_client = kept
        yield kept[1]


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
# Shown as redis:// wherever kombu writes the broker's URL out: a worker's "Connected to"
# line, and the URL Flower reads to pick its Redis broker view. (rediss:// shows as redis://
# too; the connection itself keeps its TLS.)
kombu_connection.resolve_aliases.setdefault(TRANSPORT, "redis")
