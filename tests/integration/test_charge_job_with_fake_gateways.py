"""The charge job as a use case: handed a unit of work whose Stripe is a fake of the test's
own, it decides every outcome from what that fake answers. Stripe's own behaviour (the
emulator) is covered by the other charging tests; these pin the use case's decisions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from billing.adapters.stripe_gateway import PaymentIntentResult
from billing.charging import charges
from billing.extensions import db
from billing.models import ChargeAttempt, Invoice
from billing.platform import context
from billing.platform.errors import TransientJobError
from billing.platform.outbox import JobWork
from tests.support.fake_stripe import FakeStripe


@pytest.fixture
def stripe() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
def work(app, stripe) -> JobWork:
    real = context.gateways()
    return JobWork(None, dataclasses.replace(real, stripe=stripe))  # type: ignore[arg-type]


def _attempt_of(invoice: dict[str, Any]) -> str:
    [attempt] = invoice["payment_attempts"]
    return str(attempt["id"])


def test_a_succeeded_answer_pays_the_invoice_through_one_payment_intent(
    paying_customer, open_invoice, stripe, work
):
    invoice = open_invoice(paying_customer())
    attempt_id = _attempt_of(invoice)
    assert charges.execute_charge(attempt_id, work=work) == "succeeded"
    assert charges.execute_charge(attempt_id, work=work) == "succeeded"  # a redelivery
    assert stripe.created == 1
    db.session.expire_all()
    paid = db.session.get(Invoice, invoice["id"])
    assert (paid.status, paid.amount_paid) == ("paid", 5000)
    assert db.session.get(ChargeAttempt, attempt_id).stripe_payment_intent_id == "pi_fake_1"


def test_a_lost_answer_is_adopted_from_stripe_on_the_next_run_never_sent_anew(
    paying_customer, open_invoice, stripe, work
):
    invoice = open_invoice(paying_customer())
    attempt_id = _attempt_of(invoice)
    stripe.lose_next = True
    with pytest.raises(TransientJobError):
        charges.execute_charge(attempt_id, work=work)
    db.session.expire_all()
    assert db.session.get(ChargeAttempt, attempt_id).status == "unknown"
    assert charges.execute_charge(attempt_id, work=work) == "succeeded"
    assert stripe.created == 1
    assert db.session.get(Invoice, invoice["id"]).status == "paid"


def test_a_decline_fails_the_attempt_with_its_code_and_cancels_the_leftover_intent(
    paying_customer, open_invoice, stripe, work
):
    invoice = open_invoice(paying_customer())
    attempt_id = _attempt_of(invoice)
    stripe.decline_next = "insufficient_funds"
    assert charges.execute_charge(attempt_id, work=work) == "failed"
    db.session.expire_all()
    attempt = db.session.get(ChargeAttempt, attempt_id)
    assert (attempt.status, attempt.decline_code) == ("failed", "insufficient_funds")
    assert stripe.canceled == ["pi_fake_1"]
    assert db.session.get(Invoice, invoice["id"]).status == "open"


def test_an_answer_for_another_amount_is_never_recorded_as_a_payment(
    paying_customer, open_invoice, stripe, work
):
    invoice = open_invoice(paying_customer())
    attempt_id = _attempt_of(invoice)
    key = f"charge:{attempt_id}"
    stripe.intents[key] = PaymentIntentResult(
        "pi_other", "succeeded", 4999, "eur", stripe_amount=4999
    )
    stripe.metadata["pi_other"] = {"ledger_key": key}
    assert charges.execute_charge(attempt_id, work=work) == "failed"
    db.session.expire_all()
    assert db.session.get(ChargeAttempt, attempt_id).decline_code == charges.AMOUNT_MISMATCH
    assert db.session.get(Invoice, invoice["id"]).status == "open"
