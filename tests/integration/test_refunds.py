import pytest
from sqlalchemy import select

from billing.extensions import db
from billing.models import OutboxJob


def _paid_invoice(admin, paying_customer, open_invoice, run_jobs, amount=5000):
    invoice = open_invoice(paying_customer(), amount=amount)
    run_jobs()
    paid = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert paid["status"] == "paid"
    return paid


def _stripe_refunds(stripe_client, payment_intent):
    return stripe_client.v1.refunds.list(params={"payment_intent": payment_intent}).data


def test_a_full_refund_gives_back_everything_paid(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    response = admin.post(f"/v1/invoices/{invoice['id']}/refund", json={})
    assert response.status_code == 202
    refund = response.get_json()
    assert (refund["status"], refund["amount"]) == ("pending", 5000)
    assert admin.get(f"/v1/jobs/{refund['job']}").get_json()["name"] == "billing.refund_invoice"
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["amount_refunded"] == 5000
    assert [r["status"] for r in after["refunds"]] == ["succeeded"]
    [on_stripe] = _stripe_refunds(stripe_client, invoice["payment_attempts"][0]["payment_intent"])
    assert on_stripe.amount == 5000
    assert on_stripe.id == after["refunds"][0]["stripe_refund_id"]


def test_partial_refunds_add_up_and_cannot_exceed_the_payment(
    admin, paying_customer, open_invoice, run_jobs
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    path = f"/v1/invoices/{invoice['id']}/refund"
    assert admin.post(path, json={"amount": 2000, "reason": "one seat less"}).status_code == 202
    # Still on its way, the first refund already counts: 3000 is the most left.
    too_much = admin.post(path, json={"amount": 3001})
    assert too_much.status_code == 422
    assert too_much.get_json()["error"]["code"] == "refund_exceeds_payment"
    assert admin.post(path, json={"amount": 3000}).status_code == 202
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["amount_refunded"] == 5000
    nothing_left = admin.post(path, json={})
    assert nothing_left.status_code == 422


def test_an_unpaid_invoice_has_nothing_to_refund(admin, paying_customer, open_invoice):
    invoice = open_invoice(paying_customer())
    response = admin.post(f"/v1/invoices/{invoice['id']}/refund", json={"amount": 1})
    assert response.status_code == 422


def test_a_refund_job_run_twice_refunds_once(
    admin, paying_customer, open_invoice, run_jobs, celery_app, stripe_client
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    job_id = admin.post(f"/v1/invoices/{invoice['id']}/refund", json={}).get_json()["job"]
    task = celery_app.tasks["billing.refund_invoice"]
    task.apply(kwargs={"job_id": job_id})
    db.session.execute(
        OutboxJob.__table__.update().where(OutboxJob.id == job_id).values(state="sent")
    )
    db.session.commit()
    task.apply(kwargs={"job_id": job_id})
    intent = invoice["payment_attempts"][0]["payment_intent"]
    assert len(_stripe_refunds(stripe_client, intent)) == 1
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["amount_refunded"] == 5000


def test_a_customer_key_cannot_refund(paying_customer, open_invoice, customer_api, run_jobs, admin):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    api = customer_api(invoice["customer"])
    assert api.post(f"/v1/invoices/{invoice['id']}/refund", json={}).status_code == 403
    assert (
        db.session.scalar(select(OutboxJob.id).where(OutboxJob.name == "billing.refund_invoice"))
        is None
    )


def test_a_refund_whose_answer_was_lost_is_found_on_stripe_not_sent_again(
    admin, paying_customer, open_invoice, run_jobs, proxied_app, stripe_client
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    refund_id = admin.post(f"/v1/invoices/{invoice['id']}/refund", json={}).get_json()["id"]
    proxied, proxy = proxied_app
    proxy.drop_responses(1, path="/v1/refunds")
    with proxied.app_context():
        from billing.platform.errors import TransientJobError
        from billing.refunds import refunds

        with pytest.raises(TransientJobError):
            refunds.execute_refund(refund_id)
        db.session.remove()
    lost = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert [r["status"] for r in lost["refunds"]] == ["unknown"]
    # Started again, it asks Stripe first, and adopts the refund made the first time.
    with proxied.app_context():
        assert refunds.execute_refund(refund_id) == "succeeded"
        db.session.remove()
    intent = invoice["payment_attempts"][0]["payment_intent"]
    assert len(_stripe_refunds(stripe_client, intent)) == 1
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert ([r["status"] for r in after["refunds"]], after["amount_refunded"]) == (
        ["succeeded"],
        5000,
    )
