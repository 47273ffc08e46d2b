"""The charge job as a use case, with no database: handed an in-memory unit of work and a
fake Stripe, the same code as production decides every outcome, through the same
transition tables, and commits each outcome together with the job's end, or nothing at
all. The statements themselves are pinned by the integration tests on PostgreSQL."""

from __future__ import annotations

import pytest

from billing.adapters.stripe_gateway import StripeRateLimited
from billing.charging import charges
from billing.charging.rules import ChargeStatus, IllegalChargeTransition
from billing.domain.jobs import JobState
from billing.domain.ledger import LedgerState
from billing.models import ChargeAttempt, Customer, Invoice
from billing.platform.errors import HeldElsewhere, TransientJobError
from tests.support.fake_stripe import FakeStripe
from tests.support.memory_charging import CLAIM_LEASE, InMemoryChargeWork, RunningJob

ATTEMPT = "ca_test_1"
INVOICE = "in_test_1"


@pytest.fixture
def stripe() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
def work(stripe: FakeStripe) -> InMemoryChargeWork:
    return InMemoryChargeWork(stripe, job=RunningJob("job_test_1"))


def given_an_open_invoice(
    work: InMemoryChargeWork,
    *,
    invoice_status: str = "open",
    attempt_status: str = "pending",
    payment_method: str | None = "pm_card_visa",
) -> None:
    """A customer on Stripe owing 50.00 EUR, and one attempt at charging it."""
    work.add(
        Customer(
            id="cus_test_1",
            name="Acme GmbH",
            email="billing@acme.example",
            currency="eur",
            stripe_customer_id="cus_stripe_1",
            default_payment_method=payment_method,
            delinquent=False,
        ),
        Invoice(
            id=INVOICE,
            customer_id="cus_test_1",
            status=invoice_status,
            currency="eur",
            total=5000,
            amount_paid=0,
        ),
        ChargeAttempt(
            id=ATTEMPT,
            invoice_id=INVOICE,
            ledger_key=f"charge:{ATTEMPT}",
            status=attempt_status,
            source="api",
            amount=5000,
            currency="eur",
        ),
    )


def attempt(work: InMemoryChargeWork) -> ChargeAttempt:
    return work.attempts[ATTEMPT]


def invoice(work: InMemoryChargeWork) -> Invoice:
    return work.invoices[INVOICE]


def test_a_success_pays_the_invoice_and_ends_the_job_in_the_same_commit(stripe, work):
    given_an_open_invoice(work)

    assert charges.execute_charge(ATTEMPT, work=work) == "succeeded"

    assert (attempt(work).status, attempt(work).stripe_payment_intent_id) == (
        "succeeded",
        "pi_fake_1",
    )
    assert (invoice(work).status, invoice(work).amount_paid) == ("paid", 5000)
    assert work.customer_told == [(ATTEMPT, "succeeded")]
    assert work.invoices_paid == [INVOICE]
    assert work.job is not None and work.job.state == JobState.SUCCEEDED
    # Two commits: the claim before Stripe is asked, the outcome with the job's end.
    assert work.commits == 2


def test_a_redelivered_charge_job_sends_nothing_more(stripe, work):
    given_an_open_invoice(work)
    charges.execute_charge(ATTEMPT, work=work)

    assert charges.execute_charge(ATTEMPT, work=work) == "succeeded"

    assert stripe.created == 1
    assert work.customer_told == [(ATTEMPT, "succeeded")]


def test_a_decline_fails_the_attempt_with_its_code_and_tells_the_customer(stripe, work):
    given_an_open_invoice(work)
    stripe.decline_next = "insufficient_funds"

    assert charges.execute_charge(ATTEMPT, work=work) == "failed"

    assert (attempt(work).status, attempt(work).decline_code) == ("failed", "insufficient_funds")
    assert work.customer_told == [(ATTEMPT, "failed")]
    assert invoice(work).status == "open"
    # The declined intent could still be confirmed later: it is canceled.
    assert stripe.canceled == ["pi_fake_1"]
    entry = work.entry_for(attempt(work))
    assert entry is not None and entry.state == LedgerState.FAILED
    assert work.job is not None and work.job.state == JobState.SUCCEEDED


def test_a_lost_answer_leaves_the_attempt_unknown_and_the_retry_adopts_stripes_intent(stripe, work):
    given_an_open_invoice(work)
    stripe.lose_next = True

    with pytest.raises(TransientJobError):
        charges.execute_charge(ATTEMPT, work=work)
    assert attempt(work).status == "unknown"
    assert invoice(work).status == "open"
    assert work.job is not None and work.job.state == JobState.RUNNING

    assert charges.execute_charge(ATTEMPT, work=work) == "succeeded"
    assert stripe.created == 1  # found by its ledger key, never created twice
    assert invoice(work).status == "paid"


def test_a_failed_commit_of_the_outcome_changes_nothing_and_leaves_the_job_running(stripe, work):
    given_an_open_invoice(work)
    prepared = charges._prepare(ATTEMPT, work)
    assert isinstance(prepared, charges._Prepared)
    commits = work.commits
    intent = stripe.create_payment_intent(
        amount=5000,
        currency="eur",
        metadata={"attempt_id": ATTEMPT, "ledger_key": prepared.ledger_key},
        idempotency_key=prepared.ledger_key,
    )
    work.fail_next_commit = ConnectionError("the database went away")

    with pytest.raises(ConnectionError):
        charges._record_intent(work, ATTEMPT, prepared.claimed, intent)

    assert work.commits == commits
    assert (attempt(work).status, invoice(work).status) == ("started", "open")
    assert work.customer_told == []
    assert work.job is not None and work.job.state == JobState.RUNNING
    # Once its claim's lease is over, the next run adopts what Stripe did.
    work.now += CLAIM_LEASE
    assert charges.execute_charge(ATTEMPT, work=work) == "succeeded"
    assert stripe.created == 1
    assert work.job.state == JobState.SUCCEEDED


def test_a_run_while_another_holds_the_claim_waits_and_sends_nothing(stripe, work):
    given_an_open_invoice(work)
    assert isinstance(charges._prepare(ATTEMPT, work), charges._Prepared)

    with pytest.raises(HeldElsewhere):
        charges.execute_charge(ATTEMPT, work=work)

    assert stripe.created == 0


def test_a_rate_limited_first_try_lets_its_claim_go_so_the_next_run_sends_at_once(stripe, work):
    given_an_open_invoice(work)
    stripe.rate_limit_next = True

    with pytest.raises(StripeRateLimited):
        charges.execute_charge(ATTEMPT, work=work)
    assert work.entry_for(attempt(work)) is None

    assert charges.execute_charge(ATTEMPT, work=work) == "succeeded"
    assert stripe.created == 1


def test_an_attempt_for_a_voided_invoice_is_called_off_without_asking_stripe(stripe, work):
    given_an_open_invoice(work, invoice_status="void")

    assert charges.execute_charge(ATTEMPT, work=work) == "canceled"

    assert attempt(work).status == "canceled"
    assert stripe.created == 0


def test_a_customer_without_a_payment_method_fails_without_asking_stripe(stripe, work):
    given_an_open_invoice(work, payment_method=None)

    assert charges.execute_charge(ATTEMPT, work=work) == "failed"

    assert (attempt(work).status, attempt(work).decline_code) == ("failed", "no_payment_method")
    assert work.customer_told == [(ATTEMPT, "failed")]
    assert stripe.created == 0


def test_a_change_the_attempts_table_refuses_is_never_committed(stripe, work):
    given_an_open_invoice(work, attempt_status="succeeded")
    late_decline = charges._failed("card_declined", "Your card was declined.", None)

    with pytest.raises(IllegalChargeTransition), work.transaction() as store:
        locked = store.locked(ATTEMPT)
        assert locked is not None
        late_decline(store, locked[0], locked[1])

    assert attempt(work).status == ChargeStatus.SUCCEEDED
    assert attempt(work).decline_code is None
    assert (work.commits, work.customer_told) == (0, [])
