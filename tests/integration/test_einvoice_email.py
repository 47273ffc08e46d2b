"""EINVOICE_EMAIL_ATTACHMENT: the invoice's email carries its e-invoice XML beside the PDF."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from tests.integration.test_einvoices_api import GERMAN_BUSINESS, SELLER, _finalized
from tests.support.einvoice_validation import assert_valid


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, **SELLER, "EINVOICE_EMAIL_ATTACHMENT": "true"}


def test_the_invoice_email_carries_the_valid_e_invoice_its_pdf_embeds(
    admin, make_customer, run_jobs, mailbox
) -> None:
    customer = make_customer(**GERMAN_BUSINESS)
    invoice = _finalized(admin, customer, buyer_reference="PO-4711").get_json()
    run_jobs()
    [received] = [m for m in mailbox.messages if invoice["number"] in m.message["Subject"]]
    pdf, xml = list(received.message.iter_attachments())
    assert (pdf.get_filename(), xml.get_filename()) == (
        f"invoice-{invoice['number']}.pdf",
        f"invoice-{invoice['number']}.xml",
    )
    assert xml.get_content_type() == "application/xml"
    embedded = PdfReader(io.BytesIO(pdf.get_content())).attachments["factur-x.xml"][0]
    assert xml.get_content() == embedded
    assert_valid(xml.get_content(), "cii")
