"""E-invoices through the API: GET /v1/invoices/{id}/einvoice and
/v1/credit_notes/{id}/einvoice, scoped as the PDFs are, each answer valid against the XSD
and the EN 16931 Schematron; and finalizing refused, naming the field, when an e-invoice is
required and could not be valid."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from lxml import etree
from pypdf import PdfReader

from billing.documents.documents import seller
from billing.documents.view import invoice_view
from billing.models import CreditNote, CreditNoteLine, Invoice
from billing.platform.unit_of_work import transaction
from tests.support.einvoice_validation import assert_valid
from tests.support.sellers import COMPLETE_SELLER_ENV

SELLER = {"EINVOICE_REQUIRED": "eu_business", **COMPLETE_SELLER_ENV}
GERMAN_BUSINESS = {
    "name": "Northwind Traders GmbH",
    "tax_id": "DE123456789",
    "address": {
        "line1": "Hauptstraße 5",
        "postal_code": "10115",
        "city": "Berlin",
        "country": "DE",
    },
}


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, **SELLER}


def _finalized(admin: Any, customer: dict[str, Any], **fields: Any) -> Any:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [
                {"description": "Platform seats", "quantity": 12, "unit_amount": 2500},
                {"description": "Onboarding", "quantity": 1, "unit_amount": 9900, "tax_rate": 7},
            ],
            **fields,
        },
    )
    assert draft.status_code == 200, draft.get_json()
    return admin.post(f"/v1/invoices/{draft.get_json()['id']}/finalize")


def test_an_invoice_s_e_invoice_is_valid_in_both_syntaxes_and_states_its_totals(
    admin, make_customer
) -> None:
    customer = make_customer(**GERMAN_BUSINESS)
    finalized = _finalized(admin, customer, buyer_reference="PO-4711")
    assert finalized.status_code == 200, finalized.get_json()
    invoice = finalized.get_json()
    assert invoice["buyer_reference"] == "PO-4711"
    for syntax in ("cii", "ubl"):
        response = admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax={syntax}")
        assert response.status_code == 200
        assert response.mimetype == "application/xml"
        assert_valid(response.data, syntax)
    ubl = etree.fromstring(admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax=ubl").data)
    ns = {"cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"}

    def cents(element: str) -> int:
        return int(Decimal(ubl.xpath(f"string(//cbc:{element})", namespaces=ns)) * 100)

    # BT-106, BT-109, BT-110, BT-112, BT-115 against what the API answers.
    assert cents("LineExtensionAmount") == invoice["subtotal"] - invoice["discount"]
    assert cents("TaxExclusiveAmount") == invoice["total"] - invoice["tax"]
    assert (
        int(
            Decimal(ubl.xpath("string(/*/*[local-name()='TaxTotal']/cbc:TaxAmount)", namespaces=ns))
            * 100
        )
        == invoice["tax"]
    )
    assert cents("TaxInclusiveAmount") == invoice["total"]
    assert cents("PayableAmount") == invoice["amount_due"]
    assert ubl.xpath("string(//cbc:BuyerReference)", namespaces=ns) == "PO-4711"


def test_finalizing_for_a_german_business_without_a_buyer_reference_names_it(
    admin, make_customer
) -> None:
    customer = make_customer(**GERMAN_BUSINESS)
    refused = _finalized(admin, customer)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "einvoice_field_missing"
    assert refused.get_json()["error"]["param"] == "buyer_reference"


def test_a_customer_key_reads_its_own_e_invoices_only(admin, make_customer, customer_api) -> None:
    mine = make_customer(**GERMAN_BUSINESS)
    other = make_customer(name="Other Ltd", email="other@example.com")
    invoice = _finalized(admin, mine, buyer_reference="PO-1").get_json()
    assert customer_api(mine["id"]).get(f"/v1/invoices/{invoice['id']}/einvoice").status_code == 200
    stranger = customer_api(other["id"]).get(f"/v1/invoices/{invoice['id']}/einvoice")
    assert stranger.status_code == 404
    unknown = admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax=pdf")
    assert unknown.status_code == 400


def test_a_credit_note_s_e_invoice_corrects_its_invoice(admin, make_customer) -> None:
    customer = make_customer(**GERMAN_BUSINESS)
    invoice = _finalized(admin, customer, buyer_reference="PO-4711").get_json()
    with transaction() as session:
        row = session.get(Invoice, invoice["id"])
        assert row is not None and row.finalized_at is not None
        note = CreditNote(
            number="CN-2026-000001",
            invoice_id=row.id,
            customer_id=row.customer_id,
            currency=row.currency,
            status="issued",
            reason="order_change",
            subtotal=1000,
            tax=70,
            total=1070,
            amount_due_reduction=1070,
            issued_at=row.finalized_at + timedelta(days=1),
            lines=[
                CreditNoteLine(
                    description="Onboarding, shortened",
                    quantity=None,
                    tax_rate=Decimal(7),
                    amount=1000,
                    tax=70,
                )
            ],
        )
        session.add(note)
        session.flush()
        note_id = note.id
    for syntax in ("cii", "ubl"):
        response = admin.get(f"/v1/credit_notes/{note_id}/einvoice?syntax={syntax}")
        assert response.status_code == 200, response.get_json()
        assert_valid(response.data, syntax)
        assert invoice["number"].encode() in response.data


def test_the_stored_invoice_pdf_is_factur_x_with_the_e_invoice_the_api_answers(
    admin, make_customer, run_jobs
) -> None:
    customer = make_customer(**GERMAN_BUSINESS)
    invoice = _finalized(admin, customer, buyer_reference="PO-4711").get_json()
    run_jobs()
    pdf = admin.get(f"/v1/invoices/{invoice['id']}/pdf")
    assert pdf.status_code == 200
    (embedded,) = PdfReader(io.BytesIO(pdf.data)).attachments["factur-x.xml"]
    assert embedded == admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax=cii").data


def test_the_tax_rules_reverse_charge_is_category_ae_with_its_exemption_code(
    admin, make_customer
) -> None:
    admin.post("/v1/tax_rates", json={"display_name": "VAT", "percentage": 19, "country": "DE"})
    customer = make_customer(
        name="Client SARL",
        address={
            "line1": "1 rue de la Paix",
            "city": "Paris",
            "postal_code": "75002",
            "country": "FR",
        },
        tax_id="FR40303265045",
        tax_id_type="eu_vat",
        tax_status="business",
    )
    finalized = _finalized(admin, customer)
    assert finalized.status_code == 200, finalized.get_json()
    invoice = finalized.get_json()
    # The seats take the rules' reverse charge; the onboarding's own 7 % stays (manual).
    reasons = [line["tax_reason"] for line in invoice["lines"]["data"]]
    assert sorted(reasons) == ["manual", "reverse_charge"]
    for syntax in ("cii", "ubl"):
        response = admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax={syntax}")
        assert response.status_code == 200, response.get_json()
        assert_valid(response.data, syntax)
        assert b"VATEX-EU-AE" in response.data


def _inclusive_rate(admin: Any, percentage: int) -> dict[str, Any]:
    body = {"display_name": "VAT", "percentage": percentage, "country": "DE", "inclusive": True}
    created = admin.post("/v1/tax_rates", json=body)
    assert created.status_code == 200, created.get_json()
    assert created.get_json()["inclusive"] is True
    return created.get_json()  # type: ignore[no-any-return]


def test_an_invoice_at_tax_inclusive_rates_records_nets_and_its_e_invoice_is_valid(
    admin, make_customer, run_jobs
) -> None:
    standard, reduced = _inclusive_rate(admin, 19), _inclusive_rate(admin, 7)
    customer = make_customer(**GERMAN_BUSINESS)
    gross = {"quantity": 1, "unit_amount": 1000, "tax_rate_id": standard["id"]}
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "buyer_reference": "PO-4711",
            "lines": [
                {"description": "Licence A", **gross},
                {"description": "Licence B", **gross},
                {"description": "Licence C", **gross},
                {
                    "description": "Handbook",
                    "quantity": 2,
                    "unit_amount": 1070,
                    "tax_rate_id": reduced["id"],
                },
                # An exclusive line at the same percentage: a group of its own.
                {"description": "Support", "quantity": 1, "unit_amount": 2500, "tax_rate": 19},
            ],
        },
    )
    assert draft.status_code == 200, draft.get_json()
    lines = draft.get_json()["lines"]["data"]
    # The 19% inclusive rate's gross 30.00 holds 4.79 tax (rounded once, not 3 x 1.60).
    assert [(ln["amount"], ln["tax"], ln["tax_inclusive"]) for ln in lines] == [
        (840, 160, True),
        (840, 160, True),
        (841, 159, True),
        (2000, 140, True),
        (2500, 475, False),
    ]
    assert [ln["unit_amount"] for ln in lines] == [1000, 1000, 1000, 1070, 2500]
    finalized = admin.post(f"/v1/invoices/{draft.get_json()['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    invoice = finalized.get_json()
    # The total is what the caller gave tax included, plus the exclusive line's tax.
    assert (invoice["subtotal"], invoice["tax"], invoice["total"]) == (7021, 1094, 8115)
    assert invoice["total"] == 3 * 1000 + 2 * 1070 + 2500 + 475

    with transaction() as session:
        row = session.get_one(Invoice, invoice["id"])
        view = invoice_view(row, seller(), "en_US")
        assert [line.unit_price for line in view.lines] == [
            "€10.00 incl. tax",
            "€10.00 incl. tax",
            "€10.00 incl. tax",
            "€10.70 incl. tax",
            "€25.00",
        ]
        assert [line.amount for line in view.lines] == [
            "€8.40",
            "€8.40",
            "€8.41",
            "€20.00",
            "€25.00",
        ]
        assert [(r.rate, r.net, r.tax) for r in view.tax_summary] == [
            ("7%", "€20.00", "€1.40"),
            ("19%", "€50.21", "€9.54"),
        ]
        assert {r.label: r.value for r in view.totals}["Total"] == "€81.15"

    for syntax in ("cii", "ubl"):
        response = admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax={syntax}")
        assert response.status_code == 200
        assert_valid(response.data, syntax)
    ubl = etree.fromstring(admin.get(f"/v1/invoices/{invoice['id']}/einvoice?syntax=ubl").data)
    ns = {"cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"}
    assert ubl.xpath("string(//cbc:TaxExclusiveAmount)", namespaces=ns) == "70.21"
    assert ubl.xpath("string(//cbc:TaxInclusiveAmount)", namespaces=ns) == "81.15"
    assert ubl.xpath("string(//cbc:PayableAmount)", namespaces=ns) == "81.15"
    run_jobs()
    assert admin.get(f"/v1/invoices/{invoice['id']}/pdf").status_code == 200

    # A credit note takes back a whole inclusive line: its net and its tax.
    [licence_a] = [ln for ln in invoice["lines"]["data"] if ln["description"] == "Licence A"]
    credit = {"invoice_line": licence_a["id"], "quantity": 1}
    note = admin.post("/v1/credit_notes", json={"invoice": invoice["id"], "lines": [credit]})
    assert note.status_code == 200, note.get_json()
    credited = note.get_json()
    assert (credited["subtotal"], credited["tax"], credited["total"]) == (840, 160, 1000)
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert after["amount_due"] == 8115 - 1000
    for syntax in ("cii", "ubl"):
        response = admin.get(f"/v1/credit_notes/{credited['id']}/einvoice?syntax={syntax}")
        assert response.status_code == 200, response.get_json()
        assert_valid(response.data, syntax)


def test_a_discount_on_tax_inclusive_lines_is_refused_and_nothing_is_made(
    admin, make_customer
) -> None:
    rate = _inclusive_rate(admin, 19)
    customer = make_customer(**GERMAN_BUSINESS)
    coupon = admin.post(
        "/v1/coupons", json={"percent_off": 10, "duration": "once", "name": "Launch"}
    )
    assert coupon.status_code == 200, coupon.get_json()
    refused = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [{"description": "Licence", "unit_amount": 1190, "tax_rate_id": rate["id"]}],
            "discounts": [{"coupon": coupon.get_json()["id"]}],
        },
    )
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["error"]["code"] == "discount_on_tax_inclusive_lines"
    assert admin.get(f"/v1/invoices?customer={customer['id']}").get_json()["data"] == []
