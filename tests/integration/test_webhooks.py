"""The Stripe webhook receiver: signatures, exactly-once application, never backwards."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import OutboxJob, StripeEvent
from billing.platform.outbox import JobWork
from tests.conftest import CARD_NEEDS_3DS
from tests.support.webhooks import event, stripe_signature

SECRET = "whsec_test"  # service_env's STRIPE_WEBHOOK_SECRET
PATH = "/v1/webhooks/stripe"


def _deliver(client, payload: bytes, *, secret=SECRET, timestamp=None):
    return client.post(
        PATH,
        data=payload,
        headers={
            "Stripe-Signature": stripe_signature(payload, secret, timestamp),
            "Content-Type": "application/json",
        },
    )


def _stored_events() -> int:
    return db.session.scalar(select(func.count()).select_from(StripeEvent))


def _intent_payload(stripe_client, intent_id, **overrides):
    intent = stripe_client.v1.payment_intents.retrieve(intent_id).to_dict()
    intent.update(overrides)
    return intent


def test_a_forged_signature_is_refused_and_nothing_is_stored(client):
    response = _deliver(client, event("payment_intent.succeeded", {}), secret="whsec_wrong")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "signature_invalid"
    assert _stored_events() == 0


def test_an_old_signature_is_refused_as_a_replay(client):
    payload = event("payment_intent.succeeded", {})
    response = _deliver(client, payload, timestamp=int(time.time()) - 301)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "signature_expired"
    assert _stored_events() == 0


def test_an_unsigned_delivery_is_refused(client):
    response = client.post(PATH, data=event("charge.refunded", {}))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "signature_missing"


def test_an_unknown_event_type_is_stored_and_acknowledged(client, run_jobs):
    response = _deliver(client, event("customer.created", {"id": "cus_x"}, id_="evt_unknown1"))
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "id": "evt_unknown1", "duplicate": False}
    run_jobs()
    assert db.session.get(StripeEvent, "evt_unknown1").status == "ignored"


def test_completed_authentication_pays_the_invoice_once_however_often_delivered(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client, app
):
    invoice = open_invoice(paying_customer(card=CARD_NEEDS_3DS))
    run_jobs()
    [attempt] = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["payment_attempts"]
    assert attempt["status"] == "requires_action"
    now = int(time.time())
    older_failure = event(
        "payment_intent.payment_failed",
        _intent_payload(
            stripe_client,
            attempt["payment_intent"],
            status="requires_payment_method",
            last_payment_error={"code": "card_declined", "message": "declined"},
        ),
        created=now - 60,
        id_="evt_old_failure",
    )
    success = event(
        "payment_intent.succeeded",
        _intent_payload(stripe_client, attempt["payment_intent"], status="succeeded"),
        created=now,
        id_="evt_success",
    )
    deliveries = [success, success, success, older_failure, older_failure]

    def deliver(payload):
        with app.app_context():
            return _deliver(app.test_client(), payload).status_code

    with ThreadPoolExecutor(max_workers=5) as pool:
        assert set(pool.map(deliver, deliveries)) == {200}
    assert _stored_events() == 2
    jobs = db.session.scalar(
        select(func.count()).where(OutboxJob.name == "billing.process_stripe_event")
    )
    assert jobs == 2
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["status"] == "paid"
    assert after["amount_paid"] == invoice["total"]
    assert [a["status"] for a in after["payment_attempts"]] == ["succeeded"]
    # The older failure, applied after the success or before it, never moved it back.
    assert _deliver(client, older_failure).get_json()["duplicate"] is True
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"


def test_a_late_failure_event_never_undoes_a_payment(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer())
    run_jobs()
    attempt = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["payment_attempts"][0]
    failure = event(
        "payment_intent.payment_failed",
        _intent_payload(stripe_client, attempt["payment_intent"], status="requires_payment_method"),
    )
    assert _deliver(client, failure).status_code == 200
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["status"], after["payment_attempts"][0]["status"]) == ("paid", "succeeded")


def test_a_webhook_racing_the_charge_task_changes_the_invoice_once(
    admin, paying_customer, open_invoice, stripe_client
):
    from billing.adapters.stripe_gateway import intent_from_payload
    from billing.charging import charges
    from billing.platform.errors import TransientJobError

    invoice = open_invoice(paying_customer())
    attempt_id = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["payment_attempts"][0]["id"]
    prepared = charges._prepare(attempt_id)  # the task starts: its claim is held
    assert isinstance(prepared, charges._Prepared)
    claimed = prepared.claimed
    stripe_customer, payment_method = prepared.stripe_customer_id, prepared.payment_method
    intent = stripe_client.v1.payment_intents.create(
        params={
            "amount": invoice["total"],
            "currency": "eur",
            "customer": stripe_customer,
            "payment_method": payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": {"attempt_id": attempt_id, "invoice_id": invoice["id"]},
        }
    ).to_dict()
    # Stripe's webhook lands before the task records its own answer.
    assert charges.apply_intent_from_stripe(attempt_id, intent_from_payload(intent)) == "succeeded"
    with pytest.raises(TransientJobError):
        charges._record_intent(
            JobWork.outside_a_job(), attempt_id, claimed, intent_from_payload(intent)
        )
    assert charges.execute_charge(attempt_id) == "succeeded"  # the retry sees it done
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["status"], after["amount_paid"]) == ("paid", invoice["total"])


def test_refunds_and_disputes_made_elsewhere_show_on_the_invoice(
    admin, client, paying_customer, open_invoice, run_jobs
):
    invoice = open_invoice(paying_customer(), amount=3000)
    run_jobs()
    intent = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["payment_attempts"][0][
        "payment_intent"
    ]
    refunded = event(
        "charge.refunded", {"id": "ch_1", "payment_intent": intent, "amount_refunded": 1000}
    )
    stale = event(
        "charge.refunded", {"id": "ch_1", "payment_intent": intent, "amount_refunded": 500}
    )
    disputed = event("charge.dispute.created", {"id": "dp_1", "payment_intent": intent})
    for payload in (refunded, stale, disputed):
        assert _deliver(client, payload).status_code == 200
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["amount_refunded"] == 1000
    stored = db.session.scalars(select(StripeEvent.status).order_by(StripeEvent.received_at))
    assert sorted(stored) == ["ignored", "processed", "processed"]
    from billing.models import Invoice

    assert db.session.get(Invoice, invoice["id"]).disputed_at is not None


def test_an_event_can_be_replayed_by_an_operator(app, client, run_jobs):
    payload = event("customer.updated", {"id": "cus_1"}, id_="evt_replay")
    _deliver(client, payload)
    run_jobs()
    result = app.test_cli_runner().invoke(args=["webhooks", "replay", "evt_replay"])
    assert result.exit_code == 0, result.output
    assert db.session.get(StripeEvent, "evt_replay").status == "received"
    run_jobs()
    db.session.expire_all()
    assert db.session.get(StripeEvent, "evt_replay").status == "ignored"
    listed = app.test_cli_runner().invoke(args=["webhooks", "list"]).output
    assert "evt_replay" in listed
    missing = app.test_cli_runner().invoke(args=["webhooks", "replay", "evt_nope"])
    assert missing.exit_code == 1


def test_an_outcome_another_run_recorded_first_stands(client, monkeypatch):
    """Two runs of one event (the original job and a replay's): the one that finishes
    second does not overwrite the first's outcome, even with a failure of its own."""
    from billing.stripe_events import stripe_events

    def applied_meanwhile(_: object) -> str:
        db.session.execute(
            StripeEvent.__table__.update()
            .where(StripeEvent.id == "evt_twice")
            .values(status="processed")
        )
        db.session.commit()
        raise RuntimeError("this run failed late")

    monkeypatch.setitem(stripe_events._HANDLERS, "customer.updated", applied_meanwhile)
    _deliver(client, event("customer.updated", {"id": "cus_1"}, id_="evt_twice"))
    with pytest.raises(RuntimeError):
        stripe_events.process_event("evt_twice")
    db.session.expire_all()
    stored = db.session.get(StripeEvent, "evt_twice")
    assert (stored.status, stored.error) == ("processed", None)


def test_the_stored_event_is_the_raw_signed_one(client):
    payload = event("invoice.created", {"id": "in_x", "amount_due": 5}, id_="evt_raw")
    _deliver(client, payload)
    assert db.session.get(StripeEvent, "evt_raw").payload == json.loads(payload)


def test_a_signed_payload_that_is_no_event_is_refused(client):
    payload = b'{"object": "event", "type": "charge.refunded"}'
    response = _deliver(client, payload)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_event"
    not_json = b"\x00\x01 not json"
    assert _deliver(client, not_json).status_code == 400
    assert _stored_events() == 0
