"""The charge job's phases on their own: phase 1 claims only a pending attempt of a payable
invoice, and phase 3 is fenced by the ledger, so that a run whose claim was taken over
records nothing."""

import pytest
from sqlalchemy import func, select, update

from billing.charging import charges
from billing.extensions import db
from billing.models import ChargeAttempt, EmailDelivery, Invoice, LedgerEntry, OutboxJob
from billing.platform.errors import TransientJobError
from billing.platform.outbox import JobWork


def _take(attempt_id: str) -> charges._Prepared | None:
    prepared = charges._prepare(attempt_id)
    return prepared if isinstance(prepared, charges._Prepared) else None


def test_phase_one_claims_only_a_pending_attempt_of_a_payable_invoice(
    admin, paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer())
    [attempt] = invoice["payment_attempts"]
    taken = _take(attempt["id"])
    assert taken is not None and (taken.amount, taken.currency) == (5000, "eur")
    assert taken.claimed.claim is charges.Claim.NEW
    assert db.session.get(ChargeAttempt, attempt["id"]).status == "started"
    entry = db.session.get(LedgerEntry, taken.claimed.entry_id)
    assert (entry.key, entry.state, entry.attempt) == (f"charge:{attempt['id']}", "started", 1)

    voided = open_invoice(paying_customer(email="other@acme.example"))
    [pending] = voided["payment_attempts"]
    db.session.execute(update(Invoice).where(Invoice.id == voided["id"]).values(status="void"))
    db.session.commit()
    assert charges._prepare(pending["id"]) == "canceled"  # nothing was sent: called off
    db.session.expire_all()
    assert db.session.get(ChargeAttempt, pending["id"]).status == "canceled"
    assert not db.session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.key == f"charge:{pending['id']}")
    )


def test_a_success_recorded_after_the_claim_was_taken_over_changes_nothing(
    paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer())
    [attempt] = invoice["payment_attempts"]
    taken = _take(attempt["id"])
    assert taken is not None
    jobs_before = db.session.scalar(select(func.count()).select_from(OutboxJob))
    # Another run (or a webhook) took the entry over: this run's fencing token is stale.
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == taken.claimed.entry_id)
        .values(attempt=LedgerEntry.attempt + 1)
    )
    db.session.commit()

    late = charges.PaymentIntentResult(
        id="pi_late", status="succeeded", amount=5000, currency="eur", stripe_amount=5000
    )
    with pytest.raises(TransientJobError, match="taken over"):
        charges._record_intent(JobWork.outside_a_job(), attempt["id"], taken.claimed, late)
    db.session.expire_all()
    assert db.session.get(ChargeAttempt, attempt["id"]).status == "started"
    assert db.session.get(Invoice, invoice["id"]).status == "open"
    assert db.session.scalar(select(func.count()).select_from(EmailDelivery)) == 0
    assert db.session.scalar(select(func.count()).select_from(OutboxJob)) == jobs_before
    assert db.session.get(LedgerEntry, taken.claimed.entry_id).state == "started"
