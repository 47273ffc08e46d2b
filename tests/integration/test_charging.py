"""Charging against the real Stripe emulator: each outcome, and the faults that must not
double-charge, counted on the emulator's own list of PaymentIntents."""

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import ChargeAttempt, LedgerEntry, OutboxJob
from tests.conftest import (
    CARD_DECLINED_AFTER_ATTACH,
    CARD_NEEDS_3DS,
    intents_for_invoice,
)
from tests.support.jobs import run_until_settled


def _invoice(admin, invoice_id):
    return admin.get(f"/v1/invoices/{invoice_id}").get_json()


def test_an_automatically_collected_invoice_is_charged_after_finalization(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    customer = paying_customer()
    invoice = open_invoice(customer, amount=4200)
    [attempt] = invoice["payment_attempts"]
    assert (attempt["status"], attempt["source"], attempt["amount"]) == (
        "pending",
        "automatic",
        4200,
    )
    run_jobs()
    paid = _invoice(admin, invoice["id"])
    assert paid["status"] == "paid"
    assert (paid["amount_paid"], paid["amount_due"]) == (4200, 0)
    [attempt] = paid["payment_attempts"]
    assert attempt["status"] == "succeeded"
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.id == attempt["payment_intent"]
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 4200, "eur")
    assert intent.metadata["ledger_key"] == f"charge:{attempt['id']}"


def test_a_redelivered_charge_task_does_not_charge_twice(
    admin, paying_customer, open_invoice, celery_app, stripe_client
):
    invoice = open_invoice(paying_customer())
    job_id = db.session.scalar(
        select(OutboxJob.id).where(OutboxJob.name == "billing.charge_invoice")
    )
    task = celery_app.tasks["billing.charge_invoice"]
    for _ in range(3):  # the broker delivers it again, and again
        db.session.execute(update(OutboxJob).values(state="sent"))
        db.session.commit()
        task.apply(kwargs={"job_id": job_id})
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 1
    assert _invoice(admin, invoice["id"])["status"] == "paid"


def test_a_declined_card_fails_the_attempt_with_its_code_and_is_not_retried(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(card=CARD_DECLINED_AFTER_ATTACH))
    run_jobs()
    after = _invoice(admin, invoice["id"])
    assert after["status"] == "open"
    [attempt] = after["payment_attempts"]
    assert attempt["status"] == "failed"
    assert attempt["decline_code"] == "card_declined"
    assert "declined" in attempt["failure_message"]
    job = db.session.scalars(
        select(OutboxJob).where(OutboxJob.name == "billing.charge_invoice")
    ).one()
    assert (job.state, job.attempts) == ("succeeded", 1)
    # The declined intent is canceled on Stripe: the customer can never confirm it later,
    # after another attempt has paid the invoice.
    assert [i.status for i in intents_for_invoice(stripe_client, invoice["id"])] == ["canceled"]


def test_a_card_needing_authentication_leaves_the_attempt_requiring_action(
    admin, paying_customer, open_invoice, run_jobs
):
    invoice = open_invoice(paying_customer(card=CARD_NEEDS_3DS))
    run_jobs()
    after = _invoice(admin, invoice["id"])
    [attempt] = after["payment_attempts"]
    assert after["status"] == "open"
    assert attempt["status"] == "requires_action"
    assert attempt["next_action"]["type"] == "use_stripe_sdk"
    assert attempt["client_secret"].startswith(attempt["payment_intent"])
    # While the customer has to act, asking to pay again returns that same attempt.
    again = admin.post(f"/v1/invoices/{invoice['id']}/pay")
    assert again.status_code == 202
    assert (again.get_json()["id"], again.get_json()["created_now"]) == (attempt["id"], False)


def test_paying_now_answers_202_with_the_attempt_and_its_job(
    admin, paying_customer, open_invoice, run_jobs
):
    customer = paying_customer()
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Seats", "unit_amount": 900}],
        },
    ).get_json()
    admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert _invoice(admin, draft["id"])["payment_attempts"] == []  # send_invoice: no auto charge
    response = admin.post(f"/v1/invoices/{draft['id']}/pay")
    assert response.status_code == 202
    body = response.get_json()
    assert (body["status"], body["created_now"], body["amount"]) == ("pending", True, 900)
    assert admin.get(f"/v1/jobs/{body['job']}").get_json()["args"] == {"attempt_id": body["id"]}
    run_jobs()
    assert _invoice(admin, draft["id"])["status"] == "paid"
    refused = admin.post(f"/v1/invoices/{draft['id']}/pay")
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "invoice_not_payable"


def test_a_customer_key_can_pay_its_own_invoice_only(
    admin, paying_customer, open_invoice, customer_api
):
    mine, theirs = paying_customer(), paying_customer()
    my_invoice, their_invoice = open_invoice(mine), open_invoice(theirs)
    api = customer_api(mine["id"])
    assert api.post(f"/v1/invoices/{my_invoice['id']}/pay").status_code == 202
    assert api.post(f"/v1/invoices/{their_invoice['id']}/pay").status_code == 404


def test_a_draft_or_void_invoice_cannot_be_paid(admin, paying_customer):
    customer = paying_customer()
    draft = admin.post(
        "/v1/invoices",
        json={"customer": customer["id"], "lines": [{"description": "x", "unit_amount": 100}]},
    ).get_json()
    response = admin.post(f"/v1/invoices/{draft['id']}/pay")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "invoice_not_payable"


def test_a_customer_without_a_card_gets_a_failed_attempt_not_a_stuck_one(
    admin, make_customer, open_invoice, run_jobs
):
    customer = make_customer()
    invoice = open_invoice(customer)
    run_jobs()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    assert (attempt["status"], attempt["decline_code"]) == ("failed", "no_payment_method")


def test_voiding_before_the_charge_runs_cancels_the_attempt(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer())
    admin.post(f"/v1/invoices/{invoice['id']}/void")
    run_jobs()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    assert attempt["status"] == "canceled"
    assert intents_for_invoice(stripe_client, invoice["id"]) == []


def test_a_lost_stripe_answer_is_reconciled_not_charged_again(
    admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice = open_invoice(paying_customer())
    proxied, proxy = proxied_app
    proxy.drop_responses(1)  # the create reaches Stripe; its answer never comes back
    job_id = db.session.scalar(
        select(OutboxJob.id).where(OutboxJob.name == "billing.charge_invoice")
    )
    db.session.commit()
    with proxied.app_context():
        from workers.billing import charge_invoice

        run_until_settled(charge_invoice, job_id)  # its retries run at once
        db.session.remove()
    assert proxy.dropped == 1
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.status == "succeeded"
    after = _invoice(admin, invoice["id"])
    assert after["status"] == "paid"
    [attempt] = after["payment_attempts"]
    assert (attempt["status"], attempt["payment_intent"]) == ("succeeded", intent.id)
    job = db.session.get(OutboxJob, job_id)
    db.session.refresh(job)
    assert (job.state, job.attempts) == ("succeeded", 2)


def test_an_unknown_outcome_is_visible_until_reconciled(
    admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice = open_invoice(paying_customer())
    proxied, proxy = proxied_app
    proxy.drop_responses(1)
    attempt_id = _invoice(admin, invoice["id"])["payment_attempts"][0]["id"]
    with proxied.app_context():
        from billing.charging import charges
        from billing.platform.errors import TransientJobError

        with pytest.raises(TransientJobError):
            charges.execute_charge(attempt_id)
        db.session.remove()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    assert attempt["status"] == "unknown"
    entry = db.session.scalars(select(LedgerEntry).where(LedgerEntry.key == f"charge:{attempt_id}"))
    assert entry.one().state == "unknown"
    # The reconciler asks Stripe, finds the intent by our ledger key, and adopts it.
    from billing.charging import charges

    assert charges.execute_charge(attempt_id) == "succeeded"
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 1


def test_a_lost_answer_is_found_by_searching_its_ledger_key_not_by_listing_every_intent(
    admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice = open_invoice(paying_customer())
    proxied, proxy = proxied_app
    proxy.drop_responses(1)
    attempt_id = _invoice(admin, invoice["id"])["payment_attempts"][0]["id"]
    with proxied.app_context():
        from billing.charging import charges
        from billing.platform.errors import TransientJobError

        with pytest.raises(TransientJobError):
            charges.execute_charge(attempt_id)
        assert charges.execute_charge(attempt_id) == "succeeded"
        db.session.remove()
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert _invoice(admin, invoice["id"])["payment_attempts"][0]["payment_intent"] == intent.id
    # Asked the way production asks Stripe: one search by our key in the intent's metadata.
    asked = [urlsplit(path) for method, path in proxy.received if method == "GET"]
    assert [(url.path, parse_qs(url.query)["query"]) for url in asked] == [
        ("/v1/payment_intents/search", [f"metadata['ledger_key']:'charge:{attempt_id}'"])
    ]


def test_when_stripe_never_got_the_request_the_same_attempt_is_sent_again(
    admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice = open_invoice(paying_customer())
    proxied, proxy = proxied_app
    proxy.fail_requests(1, status=503, path="/v1/payment_intents")
    attempt_id = _invoice(admin, invoice["id"])["payment_attempts"][0]["id"]
    with proxied.app_context():
        from billing.charging import charges
        from billing.platform.errors import TransientJobError

        with pytest.raises(TransientJobError):
            charges.execute_charge(attempt_id)
        assert charges.execute_charge(attempt_id) == "succeeded"
        db.session.remove()
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.metadata["attempt_id"] == attempt_id


def test_the_reconcile_sweep_gives_a_stuck_attempt_a_new_job(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    from billing.charging import charges

    invoice = open_invoice(paying_customer())
    # The attempt's job was lost for good (dead-lettered, say) while the attempt is pending.
    db.session.execute(update(OutboxJob).values(state="dead_lettered"))
    db.session.execute(update(ChargeAttempt).values(updated_at=func.now() - timedelta(minutes=10)))
    db.session.commit()
    assert charges.reconcile_stuck_attempts() == 1
    assert charges.reconcile_stuck_attempts() == 0  # its new job is unfinished: not twice
    run_jobs()
    assert _invoice(admin, invoice["id"])["status"] == "paid"
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 1


def test_the_database_refuses_a_second_successful_payment_for_one_invoice(
    admin, paying_customer, open_invoice, run_jobs
):
    from sqlalchemy.exc import IntegrityError

    invoice = open_invoice(paying_customer())
    run_jobs()
    db.session.add(
        ChargeAttempt(
            invoice_id=invoice["id"],
            ledger_key="charge:forged",
            status="succeeded",
            source="api",
            amount=100,
            currency="eur",
        )
    )
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()
