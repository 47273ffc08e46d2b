"""Beat's lock and schedule in Redis (celery-redbeat's keys), read for `billing beat status`.

Redbeat's lock holds a random token, which names no one. So the beat holding it also
writes who it is (host, pid, start time, ECS task) under HOLDER_KEY, with the lock's own
time to live, each time it renews the lock (workers/beat.py). Both key names live here,
since `billing/` never imports `workers/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

# Every key of beat's lock and schedule starts with this (workers/app.py gives it redbeat).
REDBEAT_KEY_PREFIX = "billing:redbeat"
LOCK_KEY = f"{REDBEAT_KEY_PREFIX}:lock"
HOLDER_KEY = f"{REDBEAT_KEY_PREFIX}:holder"
SCHEDULE_KEY = f"{REDBEAT_KEY_PREFIX}:schedule"
STATICS_KEY = f"{REDBEAT_KEY_PREFIX}:statics"


def token_digest(token: str | bytes | None) -> str | None:
    """A short digest of the lock's token: ties a holder report to the lock it describes
    without writing the token itself anywhere else."""
    if token is None:
        return None
    raw = token if isinstance(token, bytes) else token.encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _ecs_task_arn() -> str | None:
    """The ECS task's ARN from the task metadata endpoint, when running on ECS."""
    base = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not base:
        return None
    try:
        with urllib.request.urlopen(f"{base}/task", timeout=1) as answer:  # noqa: S310 - ECS's own URL
            arn = json.load(answer).get("TaskARN")
    except (OSError, ValueError):
        return None
    return str(arn) if arn else None


def beat_identity() -> dict[str, Any]:
    """Who this beat process is; computed once when it starts."""
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "ecs_task_arn": _ecs_task_arn(),
    }


def announce_holder(
    client: Any, identity: dict[str, Any], lock_token: str | bytes | None, ttl_seconds: float
) -> None:
    """Write the holder's report; it lives as long as the lock would without renewal."""
    report = {**identity, "lock": token_digest(lock_token)}
    client.set(HOLDER_KEY, json.dumps(report), px=max(1, int(ttl_seconds * 1000)))


def withdraw_holder(client: Any) -> None:
    client.delete(HOLDER_KEY)


@dataclass(frozen=True)
class ScheduleEntryState:
    name: str
    task: str | None
    last_run_at: datetime | None
    next_due_at: datetime | None
    total_run_count: int | None


@dataclass(frozen=True)
class BeatState:
    lock_held: bool
    lock_ttl_seconds: float | None
    holder: dict[str, Any] | None  # the holder's own report, if it made one
    holder_matches_lock: bool  # the report names the lock as it is now
    entries: list[ScheduleEntryState]


def _decode(raw: str | bytes | None) -> Any:
    if not raw:
        return None
    # Redbeat's own decoder: it writes datetimes and schedules as tagged JSON objects.
    from redbeat.decoder import RedBeatJSONDecoder

    try:
        return json.loads(raw, cls=RedBeatJSONDecoder)
    except (ValueError, TypeError):
        return None


def read_beat_state(redis_url: str) -> BeatState:
    """The lock, its holder and the schedule; raises redis.RedisError if Redis is away."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        with client.pipeline(transaction=False) as pipe:
            pipe.get(LOCK_KEY)
            pipe.pttl(LOCK_KEY)
            pipe.get(HOLDER_KEY)
            pipe.smembers(STATICS_KEY)
            token, ttl_ms, holder_raw, names = pipe.execute()
        holder = None
        if holder_raw:
            try:
                holder = json.loads(holder_raw)
            except ValueError:
                holder = None
        entries = _entries(client, sorted(name.decode() for name in names))
    finally:
        client.close()
    held = token is not None
    return BeatState(
        lock_held=held,
        lock_ttl_seconds=ttl_ms / 1000 if held and ttl_ms is not None and ttl_ms >= 0 else None,
        holder=holder,
        holder_matches_lock=bool(held and holder and holder.get("lock") == token_digest(token)),
        entries=entries,
    )


def _entries(client: redis.Redis, names: list[str]) -> list[ScheduleEntryState]:
    if not names:
        return []
    keys = [f"{REDBEAT_KEY_PREFIX}{name}" for name in names]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "definition")
            pipe.hget(key, "meta")
            pipe.zscore(SCHEDULE_KEY, key)
        replies = pipe.execute()
    entries = []
    for index, name in enumerate(names):
        definition, meta, score = replies[3 * index : 3 * index + 3]
        definition = _decode(definition) or {}
        meta = _decode(meta) or {}
        last_run = meta.get("last_run_at")
        entries.append(
            ScheduleEntryState(
                name=name,
                task=definition.get("task"),
                last_run_at=last_run if isinstance(last_run, datetime) else None,
                next_due_at=(
                    datetime.fromtimestamp(score, UTC) if score is not None and score >= 0 else None
                ),
                total_run_count=meta.get("total_run_count"),
            )
        )
    return entries
