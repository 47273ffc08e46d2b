"""The charge job's unit of work in memory: a ChargeWork over dicts, for use-case tests
that need no database.

It keeps what production's store keeps, and enforces what it enforces: the attempts,
invoices and customers (the models themselves, as plain instances no session sees), the
ledger's entries with their claims, leases and fencing tokens, and the running job. Each
transaction works on copies of what it reads, as a session does: the copies are written
back, with the job's end, what the customer was told and what was counted, only when the
block ends without an error; an error drops them all. Every change of state goes through
the same transition tables as in production, since the use case makes it.

Kept under tests/: production never picks it, and no one can wire it by accident. mypy
checks it against the ChargeStore and ChargeWork protocols all the same.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import inspect

from billing.charging.charges import LEDGER_SCOPE
from billing.charging.store import ChargeStore, ChargeWork, Counter
from billing.domain import jobs as job_rules
from billing.domain import ledger as ledger_rules
from billing.domain.jobs import JobState
from billing.domain.ledger import LedgerState
from billing.models import ChargeAttempt, Customer, Invoice
from billing.platform import ledger
from billing.platform.context import Gateways
from billing.platform.ledger import Claim, ClaimResult, LeaseLost

# Any length would do: the tests move the clock past it to take a claim over.
CLAIM_LEASE = timedelta(seconds=30)

Row = TypeVar("Row", ChargeAttempt, Invoice, Customer)


@dataclass
class LedgerRow:
    id: int
    scope: str
    key: str
    fingerprint: str
    state: LedgerState
    attempt: int
    locked_until: datetime | None
    outcome: dict[str, Any] | None = None


@dataclass
class RunningJob:
    """The job the work belongs to, as the runner started it."""

    id: str
    attempts: int = 1
    state: JobState = JobState.RUNNING


class InMemoryChargeWork:
    """What the tests hand the charge job instead of the runner's JobWork. What it holds
    is what is committed; a test sets it up with `add` and reads it afterwards."""

    def __init__(self, stripe: Any, *, job: RunningJob | None = None) -> None:
        # The charge job talks to Stripe alone: it is handed no mailer, storage or sender.
        self._gateways = Gateways(
            stripe=stripe,
            mailer=cast(Any, None),
            storage=cast(Any, None),
            webhooks=cast(Any, None),
        )
        self.job = job
        self.now = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
        self.customers: dict[str, Customer] = {}
        self.invoices: dict[str, Invoice] = {}
        self.attempts: dict[str, ChargeAttempt] = {}
        self.ledger: dict[int, LedgerRow] = {}
        # (attempt id, the status it was told of), in the order the commits made them.
        self.customer_told: list[tuple[str, str]] = []
        # The invoices whose payment was followed up, as production clears a delinquency.
        self.invoices_paid: list[str] = []
        self.counted: list[Counter] = []
        self.commits = 0
        # Raised instead of the next commit, as a database gone at that moment would.
        self.fail_next_commit: Exception | None = None

    @property
    def gateways(self) -> Gateways:
        return self._gateways

    def add(self, *rows: ChargeAttempt | Invoice | Customer) -> None:
        """Rows committed before the test begins."""
        for row in rows:
            self._table(type(row))[row.id] = row

    def entry_for(self, attempt: ChargeAttempt) -> LedgerRow | None:
        return next(
            (e for e in self.ledger.values() if e.key == attempt.ledger_key),
            None,
        )

    def _table(self, model: type[Row]) -> dict[str, Row]:
        tables: dict[type[Any], dict[str, Any]] = {
            ChargeAttempt: self.attempts,
            Invoice: self.invoices,
            Customer: self.customers,
        }
        return cast(dict[str, Row], tables[model])

    @contextmanager
    def transaction(self) -> Iterator[ChargeStore]:
        store = InMemoryChargeStore(self)
        # An error inside the block leaves through the yield, past the commit.
        yield store
        failure, self.fail_next_commit = self.fail_next_commit, None
        if failure is not None:
            raise failure
        store.commit()


class InMemoryChargeStore:
    """One transaction of an InMemoryChargeWork."""

    def __init__(self, work: InMemoryChargeWork) -> None:
        self.work = work
        self._rows: dict[tuple[type[Any], str], Any] = {}
        self._ledger: dict[int, LedgerRow | None] = {}  # None: deleted
        self._told: list[tuple[str, str]] = []
        self._paid: list[str] = []
        self._counted: list[Counter] = []
        self._job_state: JobState | None = None

    # --- rows ---------------------------------------------------------------------------

    def _working(self, model: type[Row], row_id: str) -> Row | None:
        """The transaction's own copy of a row, the same one each time it is read."""
        key = (model, row_id)
        if key not in self._rows:
            committed = self.work._table(model).get(row_id)
            if committed is None:
                return None
            self._rows[key] = _copy(committed)
        return cast(Row, self._rows[key])

    def locked(self, attempt_id: str) -> tuple[ChargeAttempt, Invoice, Customer] | None:
        attempt = self._working(ChargeAttempt, attempt_id)
        if attempt is None:
            return None
        invoice = self._working(Invoice, attempt.invoice_id)
        assert invoice is not None
        customer = self._working(Customer, invoice.customer_id)
        assert customer is not None
        return attempt, invoice, customer

    def locked_attempt(self, attempt_id: str) -> ChargeAttempt | None:
        return self._working(ChargeAttempt, attempt_id)

    # --- the ledger -----------------------------------------------------------------------

    def _entry(self, entry_id: int) -> LedgerRow | None:
        if entry_id not in self._ledger:
            committed = self.work.ledger.get(entry_id)
            if committed is None:
                return None
            self._ledger[entry_id] = replace(committed)
        return self._ledger[entry_id]

    def _entry_on(self, key: str) -> LedgerRow | None:
        ids = {*self.work.ledger, *self._ledger}
        for entry_id in sorted(ids):
            entry = self._entry(entry_id)
            if entry is not None and entry.scope == LEDGER_SCOPE and entry.key == key:
                return entry
        return None

    def claim(self, attempt: ChargeAttempt) -> ClaimResult:
        now = self.work.now
        entry = self._entry_on(attempt.ledger_key)
        if entry is None:
            entry_id = max({0, *self.work.ledger, *self._ledger}) + 1
            self._ledger[entry_id] = LedgerRow(
                entry_id,
                LEDGER_SCOPE,
                attempt.ledger_key,
                attempt.id,
                LedgerState.STARTED,
                1,
                now + CLAIM_LEASE,
            )
            claimed = ClaimResult(Claim.NEW, entry_id, 1, LedgerState.STARTED)
        else:
            lease_left = ((entry.locked_until or now) - now).total_seconds()
            found = ledger.existing_entry_claim(
                entry.state, entry.fingerprint == attempt.id, lease_left
            )
            if found is Claim.RESUMED:
                entry.state = ledger_rules.require_transition(entry.state, LedgerState.STARTED)
                entry.attempt += 1
                entry.locked_until = now + CLAIM_LEASE
            claimed = ClaimResult(
                found,
                entry.id,
                entry.attempt,
                entry.state,
                outcome=entry.outcome,
                lease_left=lease_left if found is Claim.IN_PROGRESS else None,
            )
        return ledger.usable(claimed, LEDGER_SCOPE, attempt.ledger_key, attempt.id, CLAIM_LEASE)

    def _own(self, claimed: ClaimResult) -> LedgerRow | None:
        """The claimed entry, if this very claim still holds it (its fencing token)."""
        entry = self._entry(claimed.entry_id)
        if entry is None or entry.attempt != claimed.attempt:
            return None
        return entry if entry.state == LedgerState.STARTED else None

    def complete_claim(
        self, claimed: ClaimResult, state: str, outcome: dict[str, Any] | None = None
    ) -> None:
        entry = self._own(claimed)
        if entry is None:
            raise LeaseLost(f"ledger entry {claimed.entry_id} was taken over by a later attempt")
        entry.state = ledger_rules.require_transition(entry.state, LedgerState(state))
        entry.outcome = outcome
        entry.locked_until = None

    def mark_claim_unknown(self, claimed: ClaimResult, outcome: dict[str, Any]) -> bool:
        entry = self._own(claimed)
        if entry is None:
            return False
        entry.state = ledger_rules.require_transition(entry.state, LedgerState.UNKNOWN)
        entry.outcome = outcome
        entry.locked_until = None
        return True

    def release_claim(self, claimed: ClaimResult) -> None:
        if self._own(claimed) is not None:
            self._ledger[claimed.entry_id] = None

    # --- what is recorded with an outcome -------------------------------------------------

    def now(self) -> Any:
        return self.work.now

    def tell_customer(self, attempt: ChargeAttempt) -> None:
        self._told.append((attempt.id, attempt.status))

    def invoice_paid(self, invoice: Invoice) -> None:
        self._paid.append(invoice.id)

    def count(self, counter: Counter) -> None:
        self._counted.append(counter)

    def finish_job(self) -> None:
        job = self.work.job
        if job is not None:
            self._job_state = job_rules.require_transition(job.state, JobState.SUCCEEDED)

    # --- the end --------------------------------------------------------------------------

    def commit(self) -> None:
        work = self.work
        for (model, row_id), row in self._rows.items():
            work._table(model)[row_id] = row
        for entry_id, entry in self._ledger.items():
            if entry is None:
                work.ledger.pop(entry_id, None)
            else:
                work.ledger[entry_id] = entry
        work.customer_told.extend(self._told)
        work.invoices_paid.extend(self._paid)
        work.counted.extend(self._counted)
        if work.job is not None and self._job_state is not None:
            work.job.state = self._job_state
        work.commits += 1


def _copy(row: Row) -> Row:
    """A fresh instance with the row's column values, nested JSON included."""
    columns = inspect(type(row)).column_attrs
    return type(row)(**{c.key: copy.deepcopy(getattr(row, c.key)) for c in columns})


def _is_a_charge_work(work: InMemoryChargeWork) -> ChargeWork:
    """For mypy, which checks the store where `transaction` yields it, and the work here."""
    return work
