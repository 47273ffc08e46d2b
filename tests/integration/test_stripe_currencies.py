"""Currencies as Stripe charges them, and payments recorded only for what was asked: through
the API, the charge job and the webhook receiver, against the Stripe emulator."""

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import ChargeAttempt, Customer, Invoice, LedgerEntry, Price
from tests.conftest import CARD_NEEDS_3DS, CARD_OK, intents_for_invoice
from tests.support.webhooks import event, stripe_signature


def _invoice(admin, invoice_id):
    return admin.get(f"/v1/invoices/{invoice_id}").get_json()


def _mismatches(source):
    return (
        REGISTRY.get_sample_value("billing_charge_amount_mismatches_total", {"source": source}) or 0
    )


def test_an_isk_invoice_is_charged_its_whole_total(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    customer = paying_customer(currency="isk")
    invoice = open_invoice(customer, amount=12_345)  # 12,345 krónur
    assert (invoice["currency"], invoice["total"]) == ("isk", 12_345)
    run_jobs()
    paid = _invoice(admin, invoice["id"])
    assert (paid["status"], paid["amount_paid"]) == ("paid", 12_345)
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    # Stripe takes ISK with two decimals: 12,345 krónur are amount=1234500.
    assert (intent.status, intent.currency, intent.amount) == ("succeeded", "isk", 1_234_500)


def test_a_three_decimal_invoice_is_charged_exactly_its_total_in_tens_of_fils(
    admin, paying_customer, run_jobs, stripe_client
):
    customer = paying_customer(currency="kwd")
    # 19% of 1.230 KWD is 0.2337: the tax is 0.230, so that Stripe can charge the total.
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [
                {"description": "Seats", "quantity": 1, "unit_amount": 1_230, "tax_rate": 19}
            ],
        },
    ).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    assert (invoice["tax"], invoice["total"]) == (230, 1_460)
    run_jobs()
    assert _invoice(admin, invoice["id"])["amount_paid"] == 1_460
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert (intent.currency, intent.amount) == ("kwd", 1_460)


def test_a_three_decimal_amount_stripe_cannot_charge_is_refused_and_changes_nothing(
    admin, make_customer
):
    customer = make_customer(currency="kwd")
    refused = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": 1_234}],
        },
    )
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "amount_not_chargeable"
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0


@pytest.mark.parametrize("currency", ["xts", "dem"])
def test_a_currency_stripe_cannot_charge_is_refused_everywhere_and_changes_nothing(
    admin, make_customer, currency
):
    customer = make_customer()
    customers_before = db.session.scalar(select(func.count()).select_from(Customer))
    requests = [
        ("/v1/customers", {"name": "Acme", "email": "a@acme.example", "currency": currency}),
        (
            "/v1/prices",
            {"product": "Seat", "unit_amount": 100, "currency": currency, "interval": "month"},
        ),
        ("/v1/invoices", {"customer": customer["id"], "currency": currency}),
    ]
    for path, body in requests:
        response = admin.post(path, json=body)
        assert response.status_code == 400, (path, response.get_json())
        error = response.get_json()["error"]
        assert (error["code"], error["param"]) == ("currency_not_supported", "currency")
        assert currency.upper() in error["message"] or currency in error["message"]
    changed = admin.patch(f"/v1/customers/{customer['id']}", json={"currency": currency})
    assert changed.get_json()["error"]["code"] == "currency_not_supported"
    assert db.session.scalar(select(func.count()).select_from(Customer)) == customers_before
    assert db.session.scalar(select(func.count()).select_from(Price)) == 0
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["currency"] == "eur"


def test_an_invoice_recorded_in_a_currency_stripe_cannot_charge_fails_without_a_request(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    customer = paying_customer()
    invoice = open_invoice(customer, amount=5000)
    # A row from before only Stripe's currencies were accepted.
    db.session.execute(update(Customer).values(currency="xts"))
    db.session.execute(update(Invoice).values(currency="xts"))
    db.session.execute(update(ChargeAttempt).values(currency="xts"))
    db.session.commit()
    run_jobs()
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["currency"]) == ("open", "xts")
    [attempt] = after["payment_attempts"]
    assert (attempt["status"], attempt["decline_code"]) == ("failed", "currency_not_supported")
    assert intents_for_invoice(stripe_client, invoice["id"]) == []


def test_an_isk_refund_is_sent_and_read_back_in_stripes_unit(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(currency="isk"), amount=5_000)
    run_jobs()
    intent_id = _invoice(admin, invoice["id"])["payment_attempts"][0]["payment_intent"]
    refund = admin.post(f"/v1/invoices/{invoice['id']}/refund", json={"amount": 2_000})
    assert refund.status_code == 202, refund.get_json()
    run_jobs()
    on_stripe = stripe_client.v1.refunds.list(params={"payment_intent": intent_id}).data
    assert [r.amount for r in on_stripe] == [200_000]  # 2,000 krónur
    charge = next(
        c.to_dict()
        for c in stripe_client.v1.charges.list(params={"limit": 100}).data
        if c.payment_intent == intent_id
    )
    assert charge["amount_refunded"] == 200_000
    payload = event("charge.refunded", charge)
    delivered = client.post(
        "/v1/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload, "whsec_test")},
    )
    assert delivered.status_code == 200
    run_jobs()
    assert _invoice(admin, invoice["id"])["amount_refunded"] == 2_000


def test_a_succeeded_webhook_for_another_amount_does_not_pay_the_invoice(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(card=CARD_NEEDS_3DS), amount=5000)
    run_jobs()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    assert attempt["status"] == "requires_action"
    intent = stripe_client.v1.payment_intents.retrieve(attempt["payment_intent"]).to_dict()
    intent.update(status="succeeded", amount=50)  # a hundredth of the invoice
    before = _mismatches("webhook")
    payload = event("payment_intent.succeeded", intent)
    response = client.post(
        "/v1/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload, "whsec_test")},
    )
    assert response.status_code == 200
    run_jobs()
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["amount_paid"]) == ("open", 0)
    [attempt] = after["payment_attempts"]
    assert (attempt["status"], attempt["decline_code"]) == ("failed", "amount_mismatch")
    assert _mismatches("webhook") == before + 1


def test_a_charge_whose_payment_intent_is_for_another_amount_is_not_marked_paid(
    admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    from billing.charging import charges
    from billing.platform.errors import TransientJobError

    customer = paying_customer()
    invoice = open_invoice(customer, amount=5000)
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    proxied, proxy = proxied_app
    proxy.fail_requests(1, status=503, path="/v1/payment_intents")  # the answer is unknown
    with proxied.app_context():
        with pytest.raises(TransientJobError):
            charges.execute_charge(attempt["id"])
        db.session.remove()
    # What Stripe holds under our ledger key: a payment of another amount.
    row = db.session.get(ChargeAttempt, attempt["id"])
    stripe_customer = db.session.get(Customer, customer["id"]).stripe_customer_id
    card = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    stripe_client.v1.payment_methods.attach(card.id, params={"customer": stripe_customer})
    stripe_client.v1.payment_intents.create(
        params={
            "amount": 4999,
            "currency": "eur",
            "customer": stripe_customer,
            "payment_method": card.id,
            "confirm": True,
            "off_session": True,
            "metadata": {
                "invoice_id": invoice["id"],
                "attempt_id": attempt["id"],
                "ledger_key": row.ledger_key,
            },
        }
    )
    db.session.execute(update(LedgerEntry).values(locked_until=func.now()))
    db.session.commit()
    before = _mismatches("charge")
    assert charges.execute_charge(attempt["id"]) == "failed"  # reconciled, found, refused
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["amount_paid"]) == ("open", 0)
    [attempt] = after["payment_attempts"]
    assert (attempt["status"], attempt["decline_code"]) == ("failed", "amount_mismatch")
    assert _mismatches("charge") == before + 1
    # Nothing else was sent: the one intent on Stripe is the mismatched one.
    assert [i.amount for i in intents_for_invoice(stripe_client, invoice["id"])] == [4999]


class _StripeAnswersAnotherAmount:
    """The real gateway, except that the PaymentIntent created is for a cent more than
    asked: the situation of Stripe answering an idempotency key with an older request's
    intent. The emulator holds that intent; the charge path sees Stripe's true answer."""

    def __init__(self, gateway):
        self._gateway = gateway

    def __getattr__(self, name):
        return getattr(self._gateway, name)

    def create_payment_intent(self, *, amount, **fields):
        return self._gateway.create_payment_intent(amount=amount + 1, **fields)


def test_a_plain_charge_answered_with_another_amount_is_not_marked_paid(
    app, admin, paying_customer, open_invoice, run_jobs, stripe_client, monkeypatch
):
    invoice = open_invoice(paying_customer(), amount=5000)
    monkeypatch.setitem(
        app.extensions,
        "billing.stripe",
        _StripeAnswersAnotherAmount(app.extensions["billing.stripe"]),
    )
    before = _mismatches("charge")
    run_jobs()
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["amount_paid"]) == ("open", 0)
    [attempt] = after["payment_attempts"]
    assert (attempt["status"], attempt["decline_code"]) == ("failed", "amount_mismatch")
    assert _mismatches("charge") == before + 1
    assert [(i.status, i.amount) for i in intents_for_invoice(stripe_client, invoice["id"])] == [
        ("succeeded", 5001)
    ]
