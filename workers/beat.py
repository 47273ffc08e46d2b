"""Beat's scheduler: celery-redbeat, which keeps the schedule and a lock in Redis so that a
second beat waits idle, made to survive Redis losing its keys (FLUSHALL, a restart
without persistence). Redbeat's own tick then fails to extend the vanished lock and beat
exits; here beat takes the lock again (waiting, should another beat have taken it
meanwhile) and writes the schedule back, so the sweeper keeps running.

Whenever it extends the lock, it also writes who it is next to it (billing.adapters.beat_lock):
the lock's token alone names no one, and `billing beat status` must say who holds it."""

from __future__ import annotations

from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis
from redis.exceptions import LockError, RedisError

from billing.adapters.beat_lock import announce_holder, beat_identity, withdraw_holder
from billing.platform.logging import get_logger
from workers import heartbeat

log = get_logger(__name__)


class BillingRedBeatScheduler(RedBeatScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity = beat_identity()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            interval = float(super().tick(*args, **kwargs))
        except LockError:
            log.warning("beat.lock_lost_retaking")
            if self.lock is not None:
                # Blocks while another beat holds it: this one is then the idle spare.
                self.lock.acquire()
            self.setup_schedule()
            log.info("beat.lock_retaken")
            interval = 0.0
        # A tick ran under the lock: the container's health check reads this file's age.
        heartbeat.touch(self.app.conf.get("billing_heartbeat_file"))
        self._announce()
        return interval

    def _announce(self) -> None:
        """Say who holds the lock (just extended by this tick), for `billing beat status`."""
        if self.lock is None:
            return
        try:
            announce_holder(
                get_redis(self.app),
                self.identity,
                getattr(self.lock.local, "token", None),
                float(self.lock_timeout),
            )
        except RedisError as exc:
            # Only the report is lost; the lock and the schedule go on.
            log.warning("beat.holder_report_failed", error=str(exc))

    def close(self) -> None:
        if self.lock is not None:
            try:
                if self.lock.owned():
                    withdraw_holder(get_redis(self.app))
            except RedisError as exc:
                log.warning("beat.holder_report_failed", error=str(exc))
        super().close()
