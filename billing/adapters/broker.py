"""Reading the Celery broker's queues in Redis (kombu's layout), without consuming them.

kombu's Redis transport keeps a queue as a list, LPUSHed by producers and BRPOPed by
workers, so the oldest message is the last element. Messages sent with a priority go to
sibling lists named "<queue>\\x06\\x16<step>"; all of them count towards the depth.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import redis

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


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
