"""Soft time limits for tasks run by Celery's thread pool (the billing worker), which
enforces none: the prefork pool raises SoftTimeLimitExceeded inside a task from a signal
handler; here a watchdog thread raises it in the task's thread instead.

The exception arrives, as the prefork pool's does, between two Python bytecodes: a call
blocked in C (a socket read, a query) is interrupted only once it returns, so a job's own
timeouts (Stripe's, SMTP's) still bound those. No hard limit exists here: a thread cannot
be killed; the outbox lease brings back a job whose run never ends.

The task's thread takes no lock once its deadline may have fired: an exception raised
while it held one would leave that lock held for good."""

from __future__ import annotations

import ctypes
import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery.exceptions import SoftTimeLimitExceeded


def _raise_in(thread_id: int, exception: type[BaseException] | None) -> None:
    # None withdraws an exception set earlier and not raised yet.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None
    )


@dataclass(order=True)
class _Deadline:
    at: float
    number: int
    thread_id: int = field(compare=False)
    raised: bool = field(default=False, compare=False)


class SoftTimeLimits:
    """One watchdog thread per process, started by the first limited task."""

    def __init__(self) -> None:
        self._queue: list[_Deadline] = []
        # Deadlines not yet ended nor fired. Whoever pops one from here (the task ending,
        # or the watchdog firing: dict.pop is atomic) decides its fate.
        self._armed: dict[int, _Deadline] = {}
        self._numbers = itertools.count()
        self._changed = threading.Condition()
        self._watchdog: threading.Thread | None = None

    @contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        """Raises SoftTimeLimitExceeded in this thread once `seconds` have passed, unless
        the block has ended by then."""
        deadline = _Deadline(time.monotonic() + seconds, next(self._numbers), threading.get_ident())
        with self._changed:
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="soft-time-limits", daemon=True
                )
                self._watchdog.start()
            self._armed[deadline.number] = deadline
            heapq.heappush(self._queue, deadline)
            if self._queue[0] is deadline:
                self._changed.notify()
        try:
            yield
        finally:
            if self._armed.pop(deadline.number, None) is None:
                # The watchdog fired: once its exception is set, withdraw it if it has not
                # surfaced yet, so that it never lands in whatever this thread runs next.
                while not deadline.raised:
                    time.sleep(0.001)
                _raise_in(deadline.thread_id, None)

    def _watch(self) -> None:
        with self._changed:
            while True:
                if not self._queue:
                    self._changed.wait()
                    continue
                wait = self._queue[0].at - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                due = heapq.heappop(self._queue)
                if self._armed.pop(due.number, None) is not None:
                    _raise_in(due.thread_id, SoftTimeLimitExceeded)
                    due.raised = True
