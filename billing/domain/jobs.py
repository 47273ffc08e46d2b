"""Outbox jobs: follow-up work recorded with the change that caused it, run at least once.

A job is recorded as sent (published right after its commit; the column's default is
pending), and turns back to pending when that publish fails. A worker starts it
(running); a run ends it succeeded, failed (a permanent error), dead-lettered (out of
attempts) or pending again until its retry is due. The sweeper publishes again any
unfinished job that is due or lost; an operator replays a failed or dead-lettered one.
"""

from __future__ import annotations

import enum

from billing.domain.states import IllegalTransition, StateMachine


class JobState(enum.StrEnum):
    PENDING = "pending"  # to be published: a retry not yet due, or a publish that failed
    SENT = "sent"  # published: waiting in its queue
    RUNNING = "running"  # a worker runs it under a lease
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a permanent error: replayed only by an operator
    DEAD_LETTERED = "dead_lettered"  # out of attempts: replayed only by an operator


# Still to run: what the sweeper looks after.
UNFINISHED = (JobState.PENDING, JobState.SENT, JobState.RUNNING)
# Given up: what an operator may replay.
REPLAYABLE = (JobState.DEAD_LETTERED, JobState.FAILED)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset(
        {
            JobState.SENT,  # published by the sweeper
            JobState.RUNNING,  # started from an earlier message still in its queue
            JobState.DEAD_LETTERED,  # claimed with every attempt spent
        }
    ),
    JobState.SENT: frozenset(
        {
            JobState.SENT,  # its message was lost, or its lease ran out: published again
            JobState.PENDING,  # its publish failed
            JobState.RUNNING,
            JobState.DEAD_LETTERED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.RUNNING,  # started again once its lease ran out (a new fencing token)
            JobState.SENT,  # its worker stopped beating, or its lease ran out: published again
            JobState.PENDING,  # to be retried once its backoff is over
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.DEAD_LETTERED,
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    # Replayed: sent again with a fresh set of attempts.
    JobState.FAILED: frozenset({JobState.SENT}),
    JobState.DEAD_LETTERED: frozenset({JobState.SENT}),
}


class IllegalJobTransition(IllegalTransition):
    subject = "an outbox job"


MACHINE = StateMachine(JobState, TRANSITIONS, IllegalJobTransition)


def require_transition(current: str, target: JobState) -> JobState:
    """`target`, if a job in `current` may become it; IllegalJobTransition if not."""
    return MACHINE.require(current, target)
