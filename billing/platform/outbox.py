"""The transactional outbox: record jobs with the change, publish after commit, sweep the lost."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    CTE,
    Connection,
    Interval,
    String,
    any_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from billing.adapters.broker import LiveWorkers
from billing.domain import jobs as job_rules
from billing.domain.jobs import JobState
from billing.extensions import db
from billing.models import Invoice, OutboxJob
from billing.platform import context
from billing.platform.ids import new_id
from billing.platform.jobs import queue_for
from billing.platform.logging import get_logger
from billing.platform.prebuilt import Prebuilt
from billing.platform.unit_of_work import after_commit, before_commit, registered, transaction

log = get_logger(__name__)

# A job whose publish failed is swept after this grace: soon, the broker may be back.
RELAY_GRACE = timedelta(seconds=15)
SWEEP_BATCH = 500
# Ten tries over about eight minutes (with the runner's backoff): enough to ride out a
# Stripe or SMTP blip; then an operator sees the job dead-lettered.
MAX_ATTEMPTS = 10
UNFINISHED = job_rules.UNFINISHED
# The longest a job sent but never started waits before it is sent once more, in leases,
# when the broker cannot be asked whether its message still waits (the last resort).
MAX_RESEND_LEASES = 4
# A job recorded as sent is published right after its commit; one still missing from
# its queue this long after is lost. Generous, for a web process slowed by load.
SENT_GRACE = timedelta(seconds=10)
# Workers beat every 2 s; one silent for five beats is dead (or cut off from Redis, where
# it can finish nothing: its run is fenced by the attempt count anyway).
LIVENESS_WINDOW = timedelta(seconds=10)


def record_job(session: Session, name: str, **args: Any) -> str:
    """One job of `record_jobs`; returns its id."""
    [job_id] = record_jobs(session, name, [args])
    return job_id


def record_jobs(session: Session, name: str, args_of_each: Sequence[dict[str, Any]]) -> list[str]:
    """Record follow-up jobs of one name in the caller's transaction; they are published
    after commit. Returns their ids.

    Every job a transaction records, whatever its name, is inserted just before it commits,
    in one multi-row insert: a payment's receipt and its new PDF take one statement, not
    two. Until then no statement of the transaction sees them (none looks for a job it
    has just recorded).

    Each is recorded as already `sent`, with a full lease: publishing right after commit
    almost always works, and writing "sent" afterwards would cost every request another
    round trip and commit. A failed publish turns it back to `pending` (_relay);
    a process that dies between commit and publish leaves it to the sweeper."""
    if not args_of_each:
        return []
    queue = queue_for(name)
    request_id = context.current_request_id()
    rows: list[dict[str, Any]] = [
        {
            "id": new_id("job"),
            "name": name,
            "queue": queue,
            "args": args,
            "state": JobState.SENT,
            "request_id": request_id,
        }
        for args in args_of_each
    ]
    before_commit(session, _insert_recorded, *rows)
    after_commit(session, _relay, *((row["id"], name, request_id) for row in rows))
    return [row["id"] for row in rows]


# Built once: the statement each recorded job goes through.
_INSERT_SENT_JOBS = insert(OutboxJob.__table__).values(
    sent_at=func.now(), lease_expires_at=func.now() + bindparam("b_lease", type_=Interval())
)


def _insert_recorded(session: Session, rows: list[dict[str, Any]]) -> None:
    lease_for = lease()
    session.execute(_INSERT_SENT_JOBS, [{**row, "b_lease": lease_for} for row in rows])


def recorded_jobs(session: Session) -> list[tuple[str, str, str | None]]:
    """The jobs the transaction under way recorded so far: (id, name, request id)."""
    return registered(session, _relay)


def has_unfinished_job(job_name: str, arg_name: str, id_column: Any) -> Any:
    """SQL: a job `job_name` whose `arg_name` is this row's id is still to run. The sweeps
    use it to find work whose job was lost for good (dead-lettered, say)."""
    return exists().where(
        OutboxJob.name == job_name,
        OutboxJob.args[arg_name].astext == id_column,
        OutboxJob.state.in_(UNFINISHED),
    )


def lease() -> timedelta:
    """How long a sent or running job is left alone before the sweeper sends it again."""
    return timedelta(seconds=context.settings().outbox_lease_seconds)


def _publish(jobs: list[tuple[str, str, str | None]]) -> list[str]:
    published: list[str] = []
    publisher = context.publisher()
    for job_id, name, request_id in jobs:
        try:
            publisher.publish(job_id, name, request_id)
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves the job to the sweeper
            log.warning("outbox.publish_failed", job_id=job_id, job_name=name, error=str(exc))
            continue
        published.append(job_id)
    return published


def _unpublished(jobs: list[tuple[str, str, str | None]]) -> list[str]:
    published = set(_publish(jobs))
    return [job_id for job_id, _, _ in jobs if job_id not in published]


def _back_to_pending(unpublished: list[str]) -> Any:
    # Not sent after all: pending, and swept again soon rather than after a full lease.
    return (
        update(OutboxJob)
        .where(OutboxJob.id.in_(unpublished), OutboxJob.state == JobState.SENT)
        .values(state=JobState.PENDING, sent_at=None, lease_expires_at=func.now() + RELAY_GRACE)
    )


def _relay(session: Session, jobs: list[tuple[str, str, str | None]]) -> None:
    """Publish what the just-committed transaction recorded. Failure here loses nothing."""
    unpublished = _unpublished(jobs) if jobs else []
    if not unpublished:
        return
    try:
        session.execute(_back_to_pending(unpublished))
        session.commit()
    except Exception as exc:  # noqa: BLE001 - the sweeper publishes it after the lease anyway
        session.rollback()
        log.warning("outbox.mark_pending_failed", job_ids=unpublished, error=str(exc))


def sweep(limit: int = SWEEP_BATCH) -> int:
    """Publish again every unfinished job that is due or lost: a retry whose time came, a
    job whose message the broker no longer holds, a job whose worker stopped beating, and,
    as the last resort, any job whose lease ran out. Handlers are idempotent, so a
    needless resend is harmless; a lost one costs seconds, not a lease.

    Without an answer from the broker only leases count. A job sent but never started may
    then just be waiting in a long queue (a thousand PDFs ahead of it), which cannot be
    told from a lost message: each resend of a job still unstarted waits twice as long as
    the one before, up to MAX_RESEND_LEASES leases, so that a job behind a backlog is
    duplicated about once per four leases of backlog instead of once per sweep."""
    evidence = _broker_evidence(db.session())
    session = db.session()
    rows = session.execute(
        select(OutboxJob.id, OutboxJob.name, OutboxJob.request_id, OutboxJob.state)
        .where(OutboxJob.state.in_(UNFINISHED), or_(*_due_or_lost(evidence)))
        .order_by(OutboxJob.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        session.commit()
        return 0
    published = set(_publish([(r.id, r.name, r.request_id) for r in rows]))
    waited = func.now() - func.coalesce(OutboxJob.sent_at, func.now())
    for resent_unstarted in (True, False):
        ids = [
            r.id
            for r in rows
            if r.id in published and (r.state == JobState.SENT) is resent_unstarted
        ]
        if not ids:
            continue
        wait: Any = lease()
        if resent_unstarted:
            wait = func.least(func.greatest(lease(), waited + waited), MAX_RESEND_LEASES * lease())
        session.execute(
            update(OutboxJob)
            .where(OutboxJob.id.in_(ids))
            .values(state=JobState.SENT, sent_at=func.now(), lease_expires_at=func.now() + wait)
        )
    session.commit()
    states = [r.state for r in rows if r.id in published]
    log.info(
        "outbox.swept",
        republished=len(published),
        found=len(rows),
        lost_messages=len(set(evidence.lost) & published),
        due=states.count(JobState.PENDING),
        running_resent=sum(1 for r in rows if r.state == JobState.RUNNING and r.id in published),
    )
    return len(published)


@dataclass(frozen=True)
class _BrokerEvidence:
    """What the broker said, when it answered: the sent jobs whose message is in no
    queue (`lost`), those still waiting in one (`queued`), and the live workers."""

    answered: bool = False
    lost: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()
    live_workers: LiveWorkers | None = None


def _broker_evidence(session: Session) -> _BrokerEvidence:
    """Read the sent jobs first, then the broker: a job started in between is running by
    the time the sweep locks it, and is not taken for lost."""
    sent = session.execute(
        select(OutboxJob.id, OutboxJob.queue).where(
            OutboxJob.state == JobState.SENT, OutboxJob.sent_at < func.now() - SENT_GRACE
        )
    ).all()
    session.commit()
    broker = context.broker_view()
    try:
        queued: set[str] | None = set()
        if sent:
            queued = broker.queued_job_ids({row.queue for row in sent})
        live = broker.live_workers(LIVENESS_WINDOW.total_seconds())
    except Exception as exc:  # noqa: BLE001 - without the broker's word, leases decide
        log.warning("outbox.broker_unreadable", error=str(exc))
        return _BrokerEvidence()
    if queued is None:
        # The queues were not read this sweep: no sent job is taken for lost, and none is
        # resent for its lease alone, until the next scan says where each one is.
        return _BrokerEvidence(True, (), tuple(row.id for row in sent), live)
    lost = tuple(row.id for row in sent if row.id not in queued)
    return _BrokerEvidence(True, lost, tuple(queued), live)


def _among(column: Any, values: Iterable[str]) -> Any:
    """`column = ANY(array)`: one parameter however many values (a backlog's thousands)."""
    return column == any_(bindparam(None, sorted(values), type_=ARRAY(String())))


def _due_or_lost(evidence: _BrokerEvidence) -> list[Any]:
    """The sweep's conditions: any of them makes an unfinished job one to publish again."""
    expired = OutboxJob.lease_expires_at < func.now()
    if not evidence.answered:
        return [expired]
    conditions: list[Any] = [
        # A job waiting in its queue is not lost however long it waits: it is left alone.
        expired & ~((OutboxJob.state == JobState.SENT) & _among(OutboxJob.id, evidence.queued)),
        (OutboxJob.state == JobState.SENT)
        & _among(OutboxJob.id, evidence.lost)
        & (OutboxJob.sent_at < func.now() - SENT_GRACE),
    ]
    live = evidence.live_workers
    if live is not None and live.complete:
        # Started a full window ago: its worker has beaten since, if it lives.
        conditions.append(
            (OutboxJob.state == JobState.RUNNING)
            & OutboxJob.worker.is_not(None)
            & ~_among(OutboxJob.worker, live.alive)
            & (OutboxJob.started_at < func.now() - LIVENESS_WINDOW)
        )
    return conditions


@dataclass
class StartedJob:
    id: str
    name: str
    args: dict[str, Any]
    attempts: int  # also the fencing token of this run: see _finish
    request_id: str | None
    # Set once a transaction that recorded the job's outcome also recorded its success
    # (JobWork.finish_job) and committed: the runner then has nothing left to write.
    succeeded: bool = False


@dataclass
class JobWork:
    """A job's unit of work, built by the job runner and handed to its handler: the running
    job (None when a handler is called outside a job, by a command or a test), the
    gateways it talks to, and the connection its single statements share (None: each
    takes one of its own)."""

    job: StartedJob | None
    gateways: context.Gateways
    connection: Connection | None = None

    @classmethod
    def outside_a_job(cls) -> JobWork:
        return cls(None, context.gateways())

    def finish_job(self, session: Session) -> None:
        """Record the job's success in the caller's transaction, the one that records the
        job's outcome: the work and the job's end then commit together (one commit fewer
        per job, and no moment where the work is done but the job looks unfinished).
        Fenced like every other end of a run; outside a job it does nothing."""
        if self.job is None:
            return
        _SUCCEEDED.execute(session.connection(), self.job_params())
        after_commit(session, _mark_succeeded, self.job)

    def job_params(self) -> dict[str, Any]:
        """Outside a job both are NULL, and job_success() matches nothing."""
        job = self.job
        return {"b_job_id": job.id if job else None, "b_job_attempt": job.attempts if job else None}

    def job_finished(self) -> None:
        """A statement recording the job's success committed: nothing left to write."""
        if self.job is not None:
            self.job.succeeded = True

    @contextmanager
    def statements(self) -> Iterator[Connection]:
        with single_statements(self.connection) as connection:
            yield connection


def job_success(*guards: Any) -> CTE:
    """A job's success as a CTE, for a handler that records its outcome and the job's end
    in one statement: the same fenced update as JobWork.finish_job, further limited by
    `guards`; its parameters are JobWork.job_params()."""
    return _SUCCEED.where(*guards).returning(_jobs.c.id).cte("job_succeeded")


def _mark_succeeded(session: Session, finished: list[StartedJob]) -> None:
    """After a commit: the jobs whose success it recorded need no further write."""
    for job in finished:
        job.succeeded = True


def _claimable() -> Any:
    return or_(
        OutboxJob.state.in_((JobState.PENDING, JobState.SENT)),
        (OutboxJob.state == JobState.RUNNING) & (OutboxJob.lease_expires_at < func.now()),
    )


@contextmanager
def single_statements(shared: Connection | None = None) -> Iterator[Connection]:
    """A connection on which each statement is a transaction of its own: a one-statement
    change is just as atomic without BEGIN and COMMIT around it, two round trips fewer.

    `shared`, when given, is used instead of a new one: the job runner holds one for a
    whole job, so that starting it, the handler's own single statements and the job's end
    take one connection from the pool rather than one each."""
    if shared is not None:
        yield shared
        return
    with db.engine.connect() as connection:
        # psycopg2's own switch, not SQLAlchemy's isolation_level option: that one sends
        # SET default_transaction_isolation each way, and BEGIN with an explicit level.
        dbapi_connection: Any = connection.connection.dbapi_connection
        dbapi_connection.autocommit = True
        try:
            yield connection
        finally:
            if not dbapi_connection.closed:  # a lost connection is the pool's to replace
                dbapi_connection.autocommit = False


# The statements every job runs, built once with bind parameters: building them per call
# (expressions, coercions, cache keys) cost more CPU than their round trips.
_jobs = OutboxJob.__table__
_running_now = (_jobs.c.state == JobState.RUNNING) & (_jobs.c.lease_expires_at < func.now())
# Equalities, not IN: a Prebuilt statement takes no expanding list parameter.
_CLAIMABLE = or_(_jobs.c.state == JobState.PENDING, _jobs.c.state == JobState.SENT, _running_now)
_START_STATEMENT = (
    update(_jobs)
    .where(_jobs.c.id == bindparam("b_job_id"), _CLAIMABLE, _jobs.c.attempts < MAX_ATTEMPTS)
    .values(
        state=JobState.RUNNING,
        attempts=_jobs.c.attempts + 1,
        started_at=func.now(),
        lease_expires_at=func.now() + bindparam("b_lease", type_=Interval()),
        worker=bindparam("b_worker", type_=String()),
    )
    .returning(_jobs.c.name, _jobs.c.args, _jobs.c.attempts, _jobs.c.request_id)
)
_START = Prebuilt(_START_STATEMENT)
_THIS_RUN = (
    (_jobs.c.id == bindparam("b_job_id"))
    & (_jobs.c.state == JobState.RUNNING)
    & (_jobs.c.attempts == bindparam("b_job_attempt"))
)
_SUCCEED = (
    update(_jobs)
    .where(_THIS_RUN)
    .values(state=JobState.SUCCEEDED, finished_at=func.now(), last_error=None)
)
_SUCCEEDED = Prebuilt(_SUCCEED)


def start_job(
    job_id: str, *, worker: str | None = None, connection: Connection | None = None
) -> StartedJob | None:
    """Claim a job for `worker` (the id it beats under, see BrokerView); None when it is
    finished, held by a live worker, or out of attempts (then it is dead-lettered here: a
    job whose every run kills its worker never reaches the runner's own attempt check).

    Each statement commits on its own: the claim must be committed before the handler
    runs (it is the run's fencing token), and the dead-lettering is a change of its own."""
    with single_statements(connection) as statements:
        return _start_job(statements, job_id, worker)


def _start_job(connection: Connection, job_id: str, worker: str | None) -> StartedJob | None:
    row = _START.execute(
        connection, {"b_job_id": job_id, "b_lease": lease(), "b_worker": worker}
    ).one_or_none()
    if row is None:
        _give_up_if_spent(connection, job_id)
        return None
    return _started(job_id, row)


def _started(job_id: str, row: Any) -> StartedJob:
    return StartedJob(job_id, row.name, dict(row.args or {}), row.attempts, row.request_id)


def _give_up_if_spent(connection: Connection, job_id: str) -> None:
    gave_up = connection.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job_id, _claimable(), OutboxJob.attempts >= MAX_ATTEMPTS)
        .values(
            state=JobState.DEAD_LETTERED,
            finished_at=func.now(),
            last_error=func.coalesce(OutboxJob.last_error, "")
            + f" (gave up: {MAX_ATTEMPTS} attempts started, none finished)",
        )
    )
    if getattr(gave_up, "rowcount", 0):
        log.error("job.dead_lettered", job_id=job_id, attempts=MAX_ATTEMPTS)


def start_cte() -> CTE:
    """start_job's claim as a CTE, for a handler that starts its job in the statement
    that takes its work (start_job_with); parameters b_job_id, b_lease and b_worker."""
    return _START_STATEMENT.cte("started_job")


def started_columns(started: CTE) -> list[Any]:
    """What start_job_with needs of the started job's row, to select first."""
    return [started.c.name, started.c.args, started.c.attempts, started.c.request_id]


def start_job_with(
    job_id: str,
    statement: Prebuilt,
    params: dict[str, Any],
    *,
    worker: str | None = None,
    connection: Connection | None = None,
) -> tuple[StartedJob | None, Any]:
    """start_job and the handler's first statement in one: `statement` starts the job
    through start_cte() and selects started_columns() and its own, all committed together.
    Returns the started job (None as start_job does) and the statement's row."""
    with single_statements(connection) as statements:
        row = statement.execute(
            statements, {"b_job_id": job_id, "b_lease": lease(), "b_worker": worker, **params}
        ).one_or_none()
        if row is None:
            _give_up_if_spent(statements, job_id)
            return None, None
    return _started(job_id, row), row


def _finish(job: StartedJob, connection: Connection | None, **values: Any) -> bool:
    """Record how this run ended, unless the job was swept and started again meanwhile:
    a run that outlived its lease must not overwrite the newer run's outcome."""
    db.session.rollback()  # whatever the handler left half-done is not ours to commit
    with single_statements(connection) as statements:
        result = statements.execute(
            update(OutboxJob)
            .where(
                OutboxJob.id == job.id,
                OutboxJob.state == JobState.RUNNING,
                OutboxJob.attempts == job.attempts,
            )
            .values(**values)
        )
    recorded = bool(getattr(result, "rowcount", 0))
    if not recorded:
        log.warning("job.outcome_superseded", job_id=job.id, attempt=job.attempts)
    return recorded


def job_succeeded(job: StartedJob, connection: Connection | None = None) -> bool:
    if job.succeeded:
        return True  # recorded with the outcome, in the same transaction
    db.session.rollback()  # whatever the handler left half-done is not ours to commit
    with single_statements(connection) as statements:
        result = _SUCCEEDED.execute(statements, {"b_job_id": job.id, "b_job_attempt": job.attempts})
    recorded = bool(getattr(result, "rowcount", 0))
    if not recorded:
        log.warning("job.outcome_superseded", job_id=job.id, attempt=job.attempts)
    return recorded


def job_failed(job: StartedJob, error: str, connection: Connection | None = None) -> bool:
    return _finish(
        job, connection, state=JobState.FAILED, finished_at=func.now(), last_error=error[:4000]
    )


def job_dead_lettered(job: StartedJob, error: str, connection: Connection | None = None) -> bool:
    return _finish(
        job,
        connection,
        state=JobState.DEAD_LETTERED,
        finished_at=func.now(),
        last_error=error[:4000],
    )


def job_will_retry(
    job: StartedJob,
    error: str,
    countdown: float,
    *,
    spent_attempt: bool = True,
    connection: Connection | None = None,
) -> bool:
    """Park the job until its retry: pending, due in `countdown` seconds, when the sweeper
    publishes it. Not a delayed message held by a worker: a worker killed while holding
    one would hide the job from everyone for the broker's visibility timeout, and a held
    message cannot be told from a lost one. A run that only waited for another holder
    gives its attempt back (spent_attempt=False); its token is not reused by a live run,
    since this run is the one that took it and it ends here."""
    values: dict[str, Any] = {}
    if not spent_attempt:
        values["attempts"] = OutboxJob.attempts - 1
    return _finish(
        job,
        connection,
        state=JobState.PENDING,
        sent_at=None,
        last_error=error[:4000],
        lease_expires_at=func.now() + timedelta(seconds=countdown),
        **values,
    )


def get_job(job_id: str, *, customer_scope: str | None = None) -> OutboxJob | None:
    """A customer key sees the jobs about its own customer or its invoices, nothing else."""
    job = db.session.get(OutboxJob, job_id)
    if job is None or customer_scope is None:
        return job
    args = job.args or {}
    if args.get("customer_id") == customer_scope:
        return job
    invoice_id = args.get("invoice_id")
    if invoice_id is not None:
        owner = db.session.scalar(select(Invoice.customer_id).where(Invoice.id == invoice_id))
        if owner == customer_scope:
            return job
    return None


REPLAYABLE = job_rules.REPLAYABLE


class NotReplayable(Exception):
    pass


def list_dead_letters(limit: int = 100) -> list[OutboxJob]:
    return list(
        db.session.scalars(
            select(OutboxJob)
            .where(OutboxJob.state.in_(REPLAYABLE))
            .order_by(OutboxJob.finished_at.desc().nulls_last())
            .limit(limit)
        )
    )


def replay(job_id: str) -> OutboxJob:
    """Give a dead-lettered or failed job a fresh set of attempts; it is published after
    commit like any new job. Safe: every handler is idempotent through the ledger."""
    with transaction() as session:
        job = session.get(OutboxJob, job_id, with_for_update=True)
        if job is None:
            raise NotReplayable(f"no job {job_id}")
        if job.state not in REPLAYABLE:
            raise NotReplayable(f"job {job_id} is {job.state}; only {', '.join(REPLAYABLE)} replay")
        # As a newly recorded job: sent with a full lease, pending again if the publish fails.
        job.state = job_rules.require_transition(job.state, JobState.SENT)
        job.attempts = 0
        job.finished_at = None
        job.sent_at = func.now()
        job.lease_expires_at = func.now() + lease()
        after_commit(session, _relay, (job.id, job.name, job.request_id))
    log.info("job.replayed", job_id=job_id, job_name=job.name)
    return job
