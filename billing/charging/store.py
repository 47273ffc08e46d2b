"""The charge job's unit of work, as a port: what the job reads and writes, one
transaction at a time, apart from how it is stored.

The charge job decides, from Stripe's answer, what becomes of an attempt, its invoice and
its ledger entry, and when its own run ends. It makes those decisions against a
ChargeStore, opened by its ChargeWork for one transaction: everything the store changes
commits together (the job's end included) or not at all. In production the work is the
job runner's JobWork and the store runs the statements of `charges.SqlChargeStore`; a
fast test hands the job an in-memory work instead, and the same use-case code runs.

The rows are the models themselves: an in-memory store hands out plain instances that
no session ever sees, so the use case needs no second kind of attempt or invoice.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from billing.models import ChargeAttempt, Customer, Invoice
from billing.platform.context import Gateways
from billing.platform.ledger import ClaimResult


class Counter(Protocol):
    def inc(self, amount: float = 1) -> Any: ...


class ChargeStore(Protocol):
    """One transaction of the charge job: the rows it locks, the ledger claim it holds,
    and what is recorded with an outcome."""

    def locked(self, attempt_id: str) -> tuple[ChargeAttempt, Invoice, Customer] | None:
        """The attempt, its invoice and the invoice's customer, the first two locked."""

    def locked_attempt(self, attempt_id: str) -> ChargeAttempt | None:
        """The attempt alone, locked."""

    def claim(self, attempt: ChargeAttempt) -> ClaimResult:
        """The attempt's ledger claim toward Stripe: NEW, RESUMED or DONE; raises
        HeldElsewhere while another live run holds it."""

    def complete_claim(
        self, claimed: ClaimResult, state: str, outcome: dict[str, Any] | None = None
    ) -> None:
        """Record the claim's outcome; LeaseLost when a later run or Stripe's word took
        the entry over meanwhile."""

    def mark_claim_unknown(self, claimed: ClaimResult, outcome: dict[str, Any]) -> bool:
        """The side effect may or may not have happened; False when taken over."""

    def release_claim(self, claimed: ClaimResult) -> None:
        """Forget a claim whose run changed nothing at Stripe."""

    def now(self) -> Any:
        """The transaction's time, for the timestamps the outcome writes."""

    def tell_customer(self, attempt: ChargeAttempt) -> None:
        """What the customer hears of the attempt's end (its email, its document)."""

    def invoice_paid(self, invoice: Invoice) -> None:
        """The invoice was just paid: what follows from it in the same transaction (its
        customer may no longer be delinquent, its event is recorded)."""

    def count(self, counter: Counter) -> None:
        """Count an outcome once this transaction commits, and not if it rolls back."""

    def finish_job(self) -> None:
        """The running job ends with this transaction (nothing outside a job)."""


class ChargeWork(Protocol):
    """What the charge job is handed: its gateways, and its transactions."""

    @property
    def gateways(self) -> Gateways: ...

    def transaction(self) -> AbstractContextManager[ChargeStore]:
        """Commit what the store changed when the block ends, discard it on an error."""
