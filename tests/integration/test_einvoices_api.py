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

from billing.models import CreditNote, CreditNoteLine, Invoice
from billing.platform.unit_of_work import transaction
from tests.support.einvoice_validation import assert_valid

SELLER = {
    "EINVOICE_REQUIRED": "eu_business",
    "SELLER_NAME": "Example Billing GmbH",
    "SELLER_TAX_ID": "DE987654321",
    "SELLER_EMAIL": "billing@example.com",
    "SELLER_STREET": "Friedrichstraße 1",
    "SELLER_CITY": "Berlin",
    "SELLER_POSTAL_CODE": "10117",
    "SELLER_COUNTRY": "DE",
    "SELLER_PHONE": "+49 30 1234567",
    "SELLER_IBAN": "DE89370400440532013000",
    "SELLER_BIC": "COBADEFFXXX",
}
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
