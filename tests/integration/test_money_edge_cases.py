"""Edge cases where money could move without the books following (found in review)."""

from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import ChargeAttempt, LedgerEntry, OutboxJob, StripeEvent
from tests.conftest import CARD_DECLINED_AFTER_ATTACH, CARD_NEEDS_3DS, CARD_OK, intents_for_invoice
from tests.support.webhooks import event, stripe_signature


def _invoice(admin, invoice_id):
    return admin.get(f"/v1/invoices/{invoice_id}").get_json()


def _deliver(client, payload):
    return client.post(
        "/v1/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload, "whsec_test")},
    )


def test_an_invoice_cannot_be_voided_while_its_charge_outcome_is_unknown(
    admin,
    paying_customer,
    open_invoice,
    proxied_app,
    stripe_client,
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
        db.session.remove()
    refused = admin.post(f"/v1/invoices/{invoice['id']}/void")
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "payment_in_progress"
    from billing.charging import charges

    assert charges.execute_charge(attempt_id) == "succeeded"
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["amount_paid"]) == ("paid", invoice["total"])
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 1


def test_voiding_before_anything_was_sent_cancels_the_pending_attempt(
    admin, paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer())
    voided = admin.post(f"/v1/invoices/{invoice['id']}/void").get_json()
    assert [a["status"] for a in voided["payment_attempts"]] == ["canceled"]


def test_a_refund_counted_by_stripes_webhook_first_is_not_counted_twice(
    admin,
    client,
    paying_customer,
    open_invoice,
    run_jobs,
    proxied_app,
    stripe_client,
):
    invoice = open_invoice(paying_customer(), amount=5000)
    run_jobs()
    paid = _invoice(admin, invoice["id"])
    intent = paid["payment_attempts"][0]["payment_intent"]
    refund = admin.post(f"/v1/invoices/{invoice['id']}/refund", json={"amount": 2000}).get_json()
    proxied, proxy = proxied_app
    proxy.drop_responses(1, path="/v1/refunds")  # made on Stripe, the answer lost
    with proxied.app_context():
        from billing.platform.errors import TransientJobError
        from billing.refunds import refunds

        with pytest.raises(TransientJobError):
            refunds.execute_refund(refund["id"])
        db.session.remove()
    charge = next(
        c.to_dict()
        for c in stripe_client.v1.charges.list(params={"limit": 100}).data
        if c.payment_intent == intent
    )
    assert _deliver(client, event("charge.refunded", charge)).status_code == 200
    from billing.refunds import refunds
    from billing.stripe_events import stripe_events

    stripe_events.process_event(db.session.scalars(select(StripeEvent.id)).one())
    assert _invoice(admin, invoice["id"])["amount_refunded"] == 2000
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.scope == "stripe.refund")
        .values(locked_until=func.now())
    )
    db.session.commit()
    assert refunds.execute_refund(refund["id"]) == "succeeded"  # reconciled, found
    on_stripe = stripe_client.v1.refunds.list(params={"payment_intent": intent}).data
    assert [r.amount for r in on_stripe] == [2000]
    assert _invoice(admin, invoice["id"])["amount_refunded"] == 2000


def test_a_refund_left_unknown_without_a_job_is_swept(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    from billing.models import Refund
    from billing.refunds import refunds

    invoice = open_invoice(paying_customer(), amount=5000)
    run_jobs()
    admin.post(f"/v1/invoices/{invoice['id']}/refund", json={})
    db.session.execute(update(OutboxJob).values(state="dead_lettered"))
    db.session.execute(update(Refund).values(updated_at=func.now() - timedelta(minutes=10)))
    db.session.commit()
    assert refunds.reconcile_stuck_refunds() == 1
    run_jobs()
    assert _invoice(admin, invoice["id"])["amount_refunded"] == 5000


def _authenticate_on_emulator(localstripe, stripe_client, intent_id):
    secret = stripe_client.v1.payment_intents.retrieve(intent_id).client_secret
    response = requests.post(
        f"{localstripe.url}/v1/payment_intents/{intent_id}/_authenticate",
        data={"client_secret": secret, "success": "true"},
        headers={"Authorization": "Bearer sk_test_local"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_a_completed_authentication_is_found_even_when_its_webhook_is_lost(
    admin, paying_customer, open_invoice, run_jobs, stripe_client, localstripe
):
    from billing.charging import charges

    invoice = open_invoice(paying_customer(card=CARD_NEEDS_3DS))
    run_jobs()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    _authenticate_on_emulator(localstripe, stripe_client, attempt["payment_intent"])
    db.session.execute(update(ChargeAttempt).values(updated_at=func.now() - timedelta(minutes=11)))
    db.session.commit()
    assert charges.reconcile_stuck_attempts() == 1
    run_jobs()
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["payment_attempts"][0]["status"]) == ("paid", "succeeded")


def test_an_authentication_never_completed_is_given_up_so_the_invoice_can_be_charged_again(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    from billing.charging import charges

    invoice = open_invoice(paying_customer(card=CARD_NEEDS_3DS))
    run_jobs()
    db.session.execute(
        update(ChargeAttempt).values(
            finished_at=func.now() - timedelta(days=2),
            updated_at=func.now() - timedelta(minutes=11),
        )
    )
    db.session.commit()
    charges.reconcile_stuck_attempts()
    run_jobs()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    assert (attempt["status"], attempt["decline_code"]) == (
        "failed",
        "authentication_not_completed",
    )
    assert [i.status for i in intents_for_invoice(stripe_client, invoice["id"])] == ["canceled"]
    again = admin.post(f"/v1/invoices/{invoice['id']}/pay").get_json()
    assert again["created_now"] is True


def test_a_late_success_on_an_old_attempt_is_recorded_as_a_duplicate_not_a_crash(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(card=CARD_DECLINED_AFTER_ATTACH))
    run_jobs()
    [first] = _invoice(admin, invoice["id"])["payment_attempts"]
    card = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    admin.post(
        f"/v1/customers/{invoice['customer']}/payment_method", json={"payment_method": card.id}
    )
    admin.post(f"/v1/invoices/{invoice['id']}/pay")
    run_jobs()
    assert _invoice(admin, invoice["id"])["status"] == "paid"
    old = next(
        i
        for i in intents_for_invoice(stripe_client, invoice["id"])
        if i.metadata["attempt_id"] == first["id"]
    ).to_dict()
    old["status"] = "succeeded"  # as if the customer had confirmed it on-session
    _deliver(client, event("payment_intent.succeeded", old, id_="evt_late"))
    run_jobs()
    assert db.session.get(StripeEvent, "evt_late").status == "processed"
    attempts = _invoice(admin, invoice["id"])["payment_attempts"]
    assert [a["decline_code"] for a in attempts if a["id"] == first["id"]] == ["duplicate_payment"]
    assert [a["status"] for a in attempts].count("succeeded") == 1
    job = db.session.scalars(
        select(OutboxJob).where(OutboxJob.name == "billing.process_stripe_event")
    ).one()
    assert job.state == "succeeded"


@pytest.mark.parametrize(
    "payload",
    [
        b"[1,2]",
        b'"str"',
        b'{"id": "evt_1", "type": {"a": 1}, "created": 1}',
        b'{"id": "evt_2", "type": "x", "created": "x"}',
        b'{"id": "evt_3", "type": "x", "created": 1e30}',
        b'{"id": "", "type": "x", "created": 1}',
    ],
)
def test_a_signed_payload_of_the_wrong_shape_is_refused_not_a_500(client, payload):
    response = _deliver(client, payload)
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(StripeEvent)) == 0


@pytest.mark.parametrize(
    ("signature", "body"),
    [("t=abc,v1=00", b"{}"), ("garbage", b"{}"), ("t=1", b"{}"), ("t=1,v1=ab", b"\xff\xfe")],
)
def test_garbage_signatures_are_refused(client, signature, body):
    response = client.post(
        "/v1/webhooks/stripe", data=body, headers={"Stripe-Signature": signature}
    )
    assert response.status_code == 400
