import re
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from billing.extensions import db
from billing.models import CreditNote, CustomerBalanceTransaction, Event, Refund
from tests.conftest import intents_for_invoice


def _transfer_invoice(admin, customer, lines) -> dict[str, Any]:
    """An open invoice the customer pays by transfer: nothing is charged on its own."""
    draft = admin.post(
        "/v1/invoices",
        json={"customer": customer["id"], "collection_method": "send_invoice", "lines": lines},
    ).get_json()
    finalized = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    return finalized.get_json()  # type: ignore[no-any-return]


TWO_RATES = [
    {"description": "Seats", "quantity": 3, "unit_amount": 3333, "tax_rate": "19"},
    {"description": "Handbook", "quantity": 1, "unit_amount": 2501, "tax_rate": "7"},
]


def _paid_invoice(admin, paying_customer, open_invoice, run_jobs, amount=10000):
    invoice = open_invoice(paying_customer(), amount=amount)
    run_jobs()
    paid = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert paid["status"] == "paid"
    return paid


def _stripe_refunds(stripe_client, invoice):
    intent = invoice["payment_attempts"][0]["payment_intent"]
    return stripe_client.v1.refunds.list(params={"payment_intent": intent}).data


def _credit(admin, body, status=200) -> dict[str, Any]:
    response = admin.post("/v1/credit_notes", json=body)
    assert response.status_code == status, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def test_a_credit_note_on_an_open_invoice_reduces_its_amount_due_and_reverses_tax_per_rate(
    admin, make_customer
):
    invoice = _transfer_invoice(admin, make_customer(), TWO_RATES)
    seats = invoice["lines"]["data"][0]
    note = _credit(
        admin,
        {
            "invoice": invoice["id"],
            "lines": [{"invoice_line": seats["id"], "quantity": 1}],
            "reason": "order_change",
            "memo": "One seat fewer from March",
        },
    )
    assert re.fullmatch(r"CN-\d{4}-000001", note["number"])
    assert note["status"] == "issued"
    assert (note["subtotal"], note["tax"], note["total"]) == (3333, 633, 3966)
    assert note["total_tax_amounts"] == [{"tax_rate": "19", "taxable_amount": 3333, "amount": 633}]
    assert note["settlement"] == {
        "amount_due": 3966,
        "refund": 0,
        "credit_balance": 0,
        "out_of_band": 0,
    }
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["status"] == "open"
    assert after["amount_credited"] == 3966
    assert after["credit_notes_total"] == 3966
    assert after["amount_due"] == invoice["amount_due"] - 3966
    # The other rate is untouched; a free amount next spreads over what each rate has left.
    second = _credit(admin, {"invoice": invoice["id"], "amount": 1000})
    assert re.fullmatch(r"CN-\d{4}-000002", second["number"])
    assert second["total"] == 1000
    assert {t["tax_rate"] for t in second["total_tax_amounts"]} == {"19", "7"}
    assert admin.get(f"/v1/credit_notes/{note['id']}").get_json() == note
    listed = admin.get(f"/v1/credit_notes?invoice={invoice['id']}").get_json()
    assert [n["id"] for n in listed["data"]] == [second["id"], note["id"]]
    types = db.session.scalars(
        select(Event.type).where(Event.object_id == note["id"]).order_by(Event.sequence)
    ).all()
    assert types == ["credit_note.created"]


def test_crediting_every_unit_in_thirds_reverses_exactly_the_tax_charged(admin, make_customer):
    invoice = _transfer_invoice(admin, make_customer(), TWO_RATES)
    seats = invoice["lines"]["data"][0]
    notes = [
        _credit(
            admin,
            {"invoice": invoice["id"], "lines": [{"invoice_line": seats["id"], "quantity": 1}]},
        )
        for _ in range(3)
    ]
    assert sum(n["subtotal"] for n in notes) == seats["amount"]
    assert sum(n["tax"] for n in notes) == seats["tax"]
    fourth = admin.post(
        "/v1/credit_notes",
        json={"invoice": invoice["id"], "lines": [{"invoice_line": seats["id"], "quantity": 1}]},
    )
    assert fourth.status_code == 422
    assert fourth.get_json()["error"]["code"] == "credit_exceeds_invoice"


def test_a_fully_credited_invoice_is_paid_with_nothing_charged_and_dunning_stops(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    # Finalized, its automatic charge recorded but not yet sent.
    invoice = open_invoice(paying_customer(), amount=5000)
    assert [a["status"] for a in invoice["payment_attempts"]] == ["pending"]
    _credit(admin, {"invoice": invoice["id"], "amount": 5000, "reason": "duplicate"})
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["status"], after["amount_due"], after["amount_paid"]) == ("paid", 0, 0)
    assert [a["status"] for a in after["payment_attempts"]] == ["canceled"]
    assert after["next_payment_attempt"] is None
    run_jobs()
    assert intents_for_invoice(stripe_client, invoice["id"]) == []


def test_a_partly_credited_invoice_is_charged_only_what_is_left(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(), amount=5000)
    _credit(admin, {"invoice": invoice["id"], "amount": 1500})
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["status"], after["amount_paid"], after["amount_credited"]) == ("paid", 3500, 1500)
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.amount == 3500


def test_a_paid_invoice_credited_half_to_the_balance_and_half_refunded(
    admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    note = _credit(
        admin,
        {
            "invoice": invoice["id"],
            "amount": 4000,
            "reason": "product_unsatisfactory",
            "settlement": {"refund": 2000, "credit_balance": 2000},
        },
    )
    assert note["refund"] is not None
    run_jobs()
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["amount_refunded"] == 2000
    assert [r["amount"] for r in _stripe_refunds(stripe_client, invoice)] == [2000]
    customer = admin.get(f"/v1/customers/{invoice['customer']}").get_json()
    assert customer["balance"] == 2000
    [entry] = admin.get(f"/v1/customers/{invoice['customer']}/balance_transactions").get_json()[
        "data"
    ]
    assert (entry["type"], entry["amount"], entry["balance_after"], entry["credit_note"]) == (
        "credit_note",
        2000,
        2000,
        note["id"],
    )
    # Something moved: neither this note nor the invoice may be undone now.
    refused = admin.post(f"/v1/credit_notes/{note['id']}/void")
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "credit_note_not_voidable"


def test_a_credit_note_refund_whose_answer_was_lost_refunds_once(
    admin, paying_customer, open_invoice, run_jobs, proxied_app, stripe_client
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    note = _credit(
        admin, {"invoice": invoice["id"], "amount": 3000, "settlement": {"refund": 3000}}
    )
    refund_id = note["refund"]
    proxied, proxy = proxied_app
    proxy.drop_responses(1, path="/v1/refunds")
    with proxied.app_context():
        from billing.platform.errors import TransientJobError
        from billing.refunds import refunds

        with pytest.raises(TransientJobError):
            refunds.execute_refund(refund_id)
        db.session.remove()
    with proxied.app_context():
        assert refunds.execute_refund(refund_id) == "succeeded"
        db.session.remove()
    run_jobs()
    assert [r.amount for r in _stripe_refunds(stripe_client, invoice)] == [3000]
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["amount_refunded"] == 3000
    assert (
        db.session.scalar(select(Refund.credit_note_id).where(Refund.id == refund_id)) == note["id"]
    )


def test_the_database_refuses_credit_notes_beyond_the_invoice_total(admin, make_customer):
    invoice = _transfer_invoice(admin, make_customer(), TWO_RATES)
    _credit(admin, {"invoice": invoice["id"], "amount": invoice["total"]})
    more = admin.post("/v1/credit_notes", json={"invoice": invoice["id"], "amount": 1})
    assert more.status_code == 422
    assert more.get_json()["error"]["code"] == "credit_exceeds_invoice"
    with pytest.raises(IntegrityError, match="credit_notes_bounded"):
        db.session.execute(
            text("UPDATE invoices SET credit_notes_total = total + 1 WHERE id = :id"),
            {"id": invoice["id"]},
        )
    db.session.rollback()


def _nothing_changed(admin, invoice) -> None:
    assert db.session.scalar(select(func.count()).select_from(CreditNote)) == 0
    assert db.session.scalar(select(func.count()).select_from(CustomerBalanceTransaction)) == 0
    now = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (now["amount_due"], now["credit_notes_total"], now["status"]) == (
        invoice["amount_due"],
        invoice["credit_notes_total"],
        invoice["status"],
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": 999_999}, 422, "credit_exceeds_invoice"),
        ({"amount": 100, "currency": "usd"}, 422, "invalid_request"),
        ({"amount": 100, "settlement": {"amount_due": 50}}, 422, "settlement_mismatch"),
        ({"amount": 100, "settlement": {"refund": 100}}, 422, "settlement_exceeds_payment"),
        ({}, 422, "credit_note_empty"),
        ({"lines": [{"invoice_line": "il_nope", "quantity": 1}]}, 422, "invoice_line_not_found"),
        ({"amount": 100, "reason": "boredom"}, 400, None),
    ],
)
def test_bad_credit_notes_are_refused_with_a_code_and_change_nothing(
    admin, make_customer, body, status, code
):
    invoice = _transfer_invoice(admin, make_customer(), TWO_RATES)
    response = admin.post("/v1/credit_notes", json={"invoice": invoice["id"], **body})
    assert response.status_code == status, response.get_json()
    if code is not None:
        assert response.get_json()["error"]["code"] == code
    _nothing_changed(admin, invoice)


def test_drafts_and_void_invoices_cannot_be_credited(admin, make_customer):
    customer = make_customer()
    draft = admin.post(
        "/v1/invoices", json={"customer": customer["id"], "lines": TWO_RATES}
    ).get_json()
    refused = admin.post("/v1/credit_notes", json={"invoice": draft["id"], "amount": 100})
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "invoice_not_creditable"
    voided = _transfer_invoice(admin, customer, TWO_RATES)
    admin.post(f"/v1/invoices/{voided['id']}/void")
    refused = admin.post("/v1/credit_notes", json={"invoice": voided["id"], "amount": 100})
    assert refused.get_json()["error"]["code"] == "invoice_not_creditable"
    assert db.session.scalar(select(func.count()).select_from(CreditNote)) == 0


def test_a_credit_note_is_voided_while_nothing_moved_and_its_credit_taken_back(
    admin, make_customer
):
    customer = make_customer()
    invoice = _transfer_invoice(admin, customer, TWO_RATES)
    note = _credit(
        admin,
        {"invoice": invoice["id"], "amount": 1200, "settlement": {"amount_due": 1200}},
    )
    voided = admin.post(f"/v1/credit_notes/{note['id']}/void")
    assert voided.status_code == 200, voided.get_json()
    assert voided.get_json()["status"] == "void"
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["amount_due"], after["credit_notes_total"]) == (invoice["amount_due"], 0)
    again = admin.post(f"/v1/credit_notes/{note['id']}/void")
    assert again.status_code == 409
    # The invoice may be credited in full again once the note is void.
    _credit(admin, {"invoice": invoice["id"], "amount": invoice["total"]})


def test_a_preview_computes_the_credit_note_and_issues_nothing(admin, make_customer):
    invoice = _transfer_invoice(admin, make_customer(), TWO_RATES)
    seats = invoice["lines"]["data"][0]
    body = {"invoice": invoice["id"], "lines": [{"invoice_line": seats["id"], "quantity": 2}]}
    preview = admin.post("/v1/credit_notes/preview", json=body)
    assert preview.status_code == 200, preview.get_json()
    shown = preview.get_json()
    assert (shown["id"], shown["number"], shown["subtotal"]) == (None, None, 6666)
    _nothing_changed(admin, invoice)
    issued = _credit(admin, body)
    assert (issued["subtotal"], issued["tax"]) == (shown["subtotal"], shown["tax"])


def test_a_customer_key_reads_its_own_credit_notes_and_issues_none(
    admin, make_customer, customer_api
):
    customer, other = make_customer(), make_customer()
    invoice = _transfer_invoice(admin, customer, TWO_RATES)
    note = _credit(admin, {"invoice": invoice["id"], "amount": 100})
    own = customer_api(customer["id"])
    assert own.get(f"/v1/credit_notes/{note['id']}").status_code == 200
    assert (
        own.post("/v1/credit_notes", json={"invoice": invoice["id"], "amount": 1}).status_code
        == 403
    )
    stranger = customer_api(other["id"])
    assert stranger.get(f"/v1/credit_notes/{note['id']}").status_code == 404
    assert stranger.get("/v1/credit_notes").get_json()["data"] == []


def test_a_credit_note_pdf_is_pending_then_served_with_its_etag_to_its_customer_only(
    admin, make_customer, customer_api, run_jobs
):
    customer, other = make_customer(), make_customer()
    invoice = _transfer_invoice(admin, customer, TWO_RATES)
    run_jobs()
    note = _credit(admin, {"invoice": invoice["id"], "amount": 500})
    path = f"/v1/credit_notes/{note['id']}/pdf"
    pending = admin.get(path)
    assert pending.status_code == 202
    assert pending.headers["Retry-After"] == "2"
    assert pending.get_json()["credit_note"] == note["id"]
    run_jobs()
    served = customer_api(customer["id"]).get(path)
    assert served.status_code == 200
    assert served.data.startswith(b"%PDF")
    assert note["number"] in served.headers["Content-Disposition"]
    again = admin.get(path, headers={"If-None-Match": served.headers["ETag"]})
    assert again.status_code == 304
    assert customer_api(other["id"]).get(path).status_code == 404
