"""Two beats against one Redis: only the holder of the lock sends; the other takes over
once the first is killed."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.e2e.conftest import start_stack, wait_for

pytestmark = pytest.mark.e2e

SENT = re.compile(r"Sending due task sweep-outbox")


def _sends(stack, name: str) -> int:
    path = stack.log_path(name)
    return len(SENT.findall(path.read_text())) if path.exists() else 0


def test_a_second_beat_stays_idle_and_takes_over_when_the_first_dies(
    database_url, redis_url, localstripe, smtp_server
):
    # The sweep every second is the fast schedule entry; a short lock for a quick takeover.
    stack = start_stack(
        database_url,
        redis_url,
        localstripe.url,
        smtp=smtp_server,
        extra_env={"BEAT_LOCK_TIMEOUT_SECONDS": "6", "OUTBOX_SWEEP_INTERVAL_SECONDS": "1"},
    )
    try:
        wait_for(lambda: _sends(stack, "beat") >= 2, timeout=60)
        stack.start_beat("beat-2")
        time.sleep(8)
        first, second = _sends(stack, "beat"), _sends(stack, "beat-2")
        assert first >= 6
        assert second == 0  # waiting on the lock: it sends nothing
        # Once per interval in all: the two never both sent.
        stack.stop("beat", sig=signal.SIGKILL)
        wait_for(lambda: _sends(stack, "beat-2") >= 3, timeout=30)
    finally:
        stack.stop_all()
