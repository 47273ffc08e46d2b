"""Reading the Celery broker's queues in Redis (kombu's layout), without consuming them,
and the registry of live workers.

kombu's Redis transport keeps a queue as a list, LPUSHed by producers and BRPOPed by
workers, so the oldest message is the last element. Messages sent with a priority go to
sibling lists named "<queue>\\x06\\x16<step>"; all of them count towards the depth.

The outbox in PostgreSQL says what should happen; Redis says what is under way. A job
recorded as sent whose message is in no queue, and that no worker has started, was lost
(Redis flushed or failed over, a worker killed with the message reserved); a job running
on a worker that stopped beating died with it. Both are knowable within seconds, so the
outbox's sweeper need not wait out a whole lease to send them again (BrokerView).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
SCAN_REST_KEY = "billing:broker:scan-rest"
SCAN_REST_FROM_SECONDS = 0.05
SCAN_REST_FACTOR = 9


@dataclass(frozen=True)
class BrokerQueue:
    name: str
    depth: int
    # Our tasks carry only a job id; the outbox knows when that job was sent.
    oldest_job_id: str | None


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s messages, highest priority first."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS[1:]]


def _job_id(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        job_id = kwargs.get("job_id")
        return job_id if isinstance(job_id, str) else None
    except (ValueError, KeyError, TypeError):
        return None  # not one of ours (a Celery control message, an old format)


def inspect_queues(redis_url: str, queues: tuple[str, ...]) -> list[BrokerQueue]:
    """Depth and oldest job of each queue; raises redis.RedisError if Redis is away."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        result = []
        for queue in queues:
            keys = queue_keys(queue)
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.llen(key)
                for key in keys:
                    pipe.lindex(key, -1)
                replies = pipe.execute()
            depths, tails = replies[: len(keys)], replies[len(keys) :]
            # The highest-priority list is drained first, so the oldest waiting message is
            # the tail of the lowest-priority non-empty list; with one priority it is the
            # tail of the queue itself.
            oldest = next((tail for tail in reversed(tails) if tail is not None), None)
            result.append(BrokerQueue(queue, sum(depths), _job_id(oldest)))
        return result
    finally:
        client.close()


# Every worker process group beats into one sorted set (member: its id, score: when it
# last beat); `since` is when the set was last (re)created, so that a sweeper can tell a
# worker that stopped beating from one whose entry a flushed Redis forgot.
WORKERS_KEY = "billing:workers"
WORKERS_SINCE_KEY = "billing:workers:since"
# Entries of workers gone for this long are dropped: enough to tell any sweep they died.
FORGET_AFTER_SECONDS = 3600.0
# The publisher writes the job's id into the message's kwargsrepr header, in the clear;
# the body is base64. Both the relay and Celery's own retries write it this way.
_JOB_ID = re.compile(rb"job_id': '([A-Za-z0-9_]+)'")


@dataclass(frozen=True)
class LiveWorkers:
    """The workers seen beating within the window. `complete` is False while the registry
    itself is younger than the window (Redis was flushed): then an absent worker may just
    not have beaten since, and nobody may be presumed dead."""

    alive: frozenset[str]
    complete: bool


class BrokerView:
    def __init__(self, redis_url: str) -> None:
        # Short timeouts: the sweeper falls back to leases when Redis does not answer.
        self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)

    def queued_job_ids(self, queues: Iterable[str]) -> set[str] | None:
        """The ids of the outbox jobs whose message waits in one of these queues, or None
        while the last scan's rest lasts.

        A scan reads every message of the queues, so what it costs Redis and a billing
        thread grows with the backlog. So a scan that took long rests the next ones for
        SCAN_REST_FACTOR times its length (kept in Redis, as sweeps run on any worker), and
        scanning never costs more than a small share of the time however long the queues
        grow. Short queues are scanned every sweep."""
        if self._redis.exists(SCAN_REST_KEY):
            return None
        started = time.monotonic()
        found = self._scan(queues)
        took = time.monotonic() - started
        if took >= SCAN_REST_FROM_SECONDS:
            self._redis.set(SCAN_REST_KEY, 1, px=max(1, int(took * SCAN_REST_FACTOR * 1000)))
        return found

    def _scan(self, queues: Iterable[str]) -> set[str]:
        pipe = self._redis.pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue):
                pipe.lrange(key, 0, -1)
        found: set[str] = set()
        for messages in pipe.execute():
            for message in messages:
                match = _JOB_ID.search(message)
                job_id = match.group(1).decode() if match else _job_id(message)
                if job_id:
                    found.add(job_id)
        return found

    def worker_beats(self, worker_id: str) -> None:
        """A live worker says so (every heartbeat, a few seconds apart)."""
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {worker_id: now})
        pipe.set(WORKERS_SINCE_KEY, now, nx=True)
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER_SECONDS)
        pipe.execute()

    def live_workers(self, window_seconds: float) -> LiveWorkers:
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrangebyscore(WORKERS_KEY, now - window_seconds, "+inf")
        pipe.get(WORKERS_SINCE_KEY)
        alive, since = pipe.execute()
        complete = since is not None and now - float(since) >= window_seconds
        return LiveWorkers(frozenset(member.decode() for member in alive), complete)
