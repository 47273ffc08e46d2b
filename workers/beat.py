"""Beat's scheduler: celery-redbeat, which keeps the schedule and a lock in Redis so that a
second beat waits idle, made to survive Redis losing its keys (FLUSHALL, a restart
without persistence). Redbeat's own tick then fails to extend the vanished lock and beat
exits; here beat takes the lock again (waiting, should another beat have taken it
meanwhile) and writes the schedule back, so the sweeper keeps running."""

from __future__ import annotations

from typing import Any

from redbeat import RedBeatScheduler
from redis.exceptions import LockError

from billing.logging import get_logger
from workers import heartbeat

log = get_logger(__name__)


class BillingRedBeatScheduler(RedBeatScheduler):
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
        return interval
