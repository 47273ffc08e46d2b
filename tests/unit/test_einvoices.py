"""EN 16931 e-invoices of transient invoices and credit notes (no database), each one
checked against its syntax's XSD and the official Schematron rules."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from pypdf import PdfReader

from billing.documents.credit_note_pdf import render_credit_note_pdf
from billing.documents.invoice_pdf import Seller, render_invoice_pdf
from billing.documents.view import Formatter, credit_note_view, invoice_view
from billing.domain.money import round_half_up
from billing.einvoices import cii, model, ubl
from billing.einvoices.categories import InconsistentTaxReason, vat_category
from billing.models import InvoiceDiscount, InvoiceLine
from tests.support.einvoice_validation import assert_valid
from tests.support.invoices import make_credit_note, make_customer, make_invoice

SELLER = Seller(
    name="Example Billing GmbH",
    address_lines=("Friedrichstraße 1", "10117 Berlin"),
    tax_id="DE987654321",
    email="billing@example.com",
    street="Friedrichstraße 1",
    city="Berlin",
    postal_code="10117",
    country="DE",
    phone="+49 30 1234567",
    iban="DE89 3704 0044 0532 0130 00",
    bic="COBADEFFXXX",
)
WRITERS: dict[str, Callable[[model.EInvoice], bytes]] = {"cii": cii.to_cii, "ubl": ubl.to_ubl}
CII = {"rsm": cii.RSM, "ram": cii.RAM}
UBL = {"cbc": ubl.CBC, "cac": ubl.CAC}


def line(
    index: int,
    *,
    quantity: int = 1,
    unit_amount: int = 10_000,
    rate: str = "19",
    reason: str | None = None,
    discount: int = 0,
) -> InvoiceLine:
    amount = quantity * unit_amount
    made = InvoiceLine(
        id=f"il_{index:04d}",
        description=f"Service {index + 1}",
        quantity=quantity,
        unit_amount=unit_amount,
        tax_rate=Decimal(rate),
        amount=amount,
        discount_amount=discount,
        tax=round_half_up((amount - discount) * Decimal(rate) / 100),
    )
    if reason is not None:
        # The tax rules' column, set on the transient object as the ORM will load it.
        made.tax_reason = reason  # type: ignore[attr-defined]
    return made


def invoice_of(lines: list[InvoiceLine], **overrides: Any) -> Any:
    subtotal = sum(item.amount for item in lines)
    discount = sum(item.discount_amount for item in lines)
    tax = sum(item.tax for item in lines)
    fields: dict[str, Any] = {
        "subtotal": subtotal,
        "discount": discount,
        "tax": tax,
        "total": subtotal - discount + tax,
        "buyer_reference": "PO-4711",
    }
    fields.update(overrides)
    return make_invoice(lines, **fields)


def einvoice_of(invoice: Any, discounts: list[InvoiceDiscount] | None = None) -> model.EInvoice:
    view = invoice_view(invoice, SELLER, "en_US", discounts=discounts or ())
    return model.require_complete(model.of_invoice(view, SELLER))


def both_valid(einvoice: model.EInvoice) -> dict[str, bytes]:
    written = {syntax: write(einvoice) for syntax, write in WRITERS.items()}
    for syntax, xml in written.items():
        assert_valid(xml, syntax)
    return written


FRENCH_BUSINESS = make_customer(
    id="cus_fr",
    name="Société Exemple SARL",
    tax_id="FR40303265045",
    address={"line1": "1 rue de la Paix", "postal_code": "75002", "city": "Paris", "country": "FR"},
)
AMERICAN_BUSINESS = make_customer(
    id="cus_us",
    name="Acme Corp.",
    tax_id=None,
    currency="usd",
    address={
        "line1": "1 Market St",
        "city": "San Francisco",
        "state": "CA",
        "postal_code": "94105",
        "country": "US",
    },
)


def test_a_domestic_invoice_at_two_rates_is_a_valid_xrechnung_and_factur_x() -> None:
    invoice = invoice_of([line(0), line(1, quantity=3, unit_amount=2_999, rate="7")])
    written = both_valid(einvoice_of(invoice))
    customization = etree.fromstring(written["ubl"]).findtext("cbc:CustomizationID", None, UBL)
    assert customization == model.XRECHNUNG
    assert b"<ram:BuyerReference>PO-4711</ram:BuyerReference>" in written["cii"]
    rates = etree.fromstring(written["cii"]).xpath(
        "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax"
        "/ram:RateApplicablePercent/text()",
        namespaces=CII,
    )
    assert rates == ["7", "19"]


def test_a_reverse_charged_invoice_to_a_french_business_is_category_ae() -> None:
    invoice = invoice_of(
        [line(0, rate="0", reason="reverse_charge"), line(1, rate="0", reason="reverse_charge")],
        customer=FRENCH_BUSINESS,
    )
    written = both_valid(einvoice_of(invoice))
    root = etree.fromstring(written["ubl"])
    assert root.findtext("cbc:CustomizationID", None, UBL) == model.EN16931
    category = root.find("cac:TaxTotal/cac:TaxSubtotal/cac:TaxCategory", UBL)
    assert category.findtext("cbc:ID", None, UBL) == "AE"
    assert category.findtext("cbc:TaxExemptionReasonCode", None, UBL) == "VATEX-EU-AE"


def test_an_export_is_category_g_and_an_exempt_line_category_e() -> None:
    invoice = invoice_of(
        [
            line(0, rate="0", reason="zero_rated_export"),
            line(1, rate="0", reason="exempt", unit_amount=5_000),
        ],
        customer=AMERICAN_BUSINESS,
        currency="usd",
    )
    written = both_valid(einvoice_of(invoice))
    codes = etree.fromstring(written["cii"]).xpath(
        "//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax/ram:CategoryCode/text()",
        namespaces=CII,
    )
    assert sorted(codes) == ["E", "G"]


def test_a_buyer_s_ein_is_no_vat_identifier_and_the_export_stays_valid() -> None:
    with_ein = make_customer(
        id="cus_us_ein",
        name="Acme Corp.",
        tax_id="123456789",
        tax_id_type="us_ein",
        currency="usd",
        address=AMERICAN_BUSINESS.address,
    )
    invoice = invoice_of(
        [line(0, rate="0", reason="zero_rated_export")], customer=with_ein, currency="usd"
    )
    assert einvoice_of(invoice).buyer.vat_id is None
    written = both_valid(einvoice_of(invoice))
    assert b"123456789" not in written["cii"]


def test_discounted_lines_carry_their_share_as_a_line_allowance_and_the_sums_hold() -> None:
    lines = [line(0, unit_amount=10_000, discount=1_000), line(1, rate="7", discount=333)]
    invoice = invoice_of(lines)
    discounts = [InvoiceDiscount(id=1, description="10% off (WELCOME)", amount=1_333)]
    written = both_valid(einvoice_of(invoice, discounts))
    root = etree.fromstring(written["cii"])
    allowances = root.xpath(
        "//ram:SpecifiedTradeAllowanceCharge/ram:ActualAmount/text()", namespaces=CII
    )
    assert allowances == ["10.00", "3.33"]
    header = "//ram:SpecifiedTradeSettlementHeaderMonetarySummation/ram:LineTotalAmount"
    assert root.xpath(f"string({header})", namespaces=CII) == "186.67"


def test_what_was_paid_credited_and_applied_is_prepaid_and_the_rest_due() -> None:
    invoice = invoice_of([line(0)], amount_paid=5_000, balance_applied=1_000, amount_credited=900)
    written = both_valid(einvoice_of(invoice))
    root = etree.fromstring(written["ubl"])
    assert root.findtext("cac:LegalMonetaryTotal/cbc:PrepaidAmount", None, UBL) == "69.00"
    assert root.findtext("cac:LegalMonetaryTotal/cbc:PayableAmount", None, UBL) == "50.00"


def test_a_credit_note_is_type_381_and_names_the_invoice_it_corrects() -> None:
    invoice = invoice_of([line(0), line(1, rate="7")])
    note = make_credit_note(invoice)
    view = credit_note_view(note, invoice, SELLER, "en_US")
    written = both_valid(model.require_complete(model.of_credit_note(view, SELLER)))
    root = etree.fromstring(written["ubl"])
    assert etree.QName(root).localname == "CreditNote"
    assert root.findtext("cbc:CreditNoteTypeCode", None, UBL) == "381"
    assert (
        root.findtext("cac:BillingReference/cac:InvoiceDocumentReference/cbc:ID", None, UBL)
        == invoice.number
    )
    assert b"<ram:TypeCode>381</ram:TypeCode>" in written["cii"]


@pytest.mark.parametrize(
    ("currency", "unit_amount", "grand_total"),
    [("jpy", 12_345, "14691"), ("kwd", 12_340, "14.68")],
)
def test_amounts_follow_the_currency_s_exponent(
    currency: str, unit_amount: int, grand_total: str
) -> None:
    # KWD: Stripe charges tens of fils, so EN 16931's two decimals hold every amount.
    item = line(0, unit_amount=unit_amount)
    if currency == "kwd":
        item.tax = 2_340  # 19 % of 12.340 rounded to the charge step
    invoice = invoice_of([item], currency=currency, customer=FRENCH_BUSINESS)
    written = both_valid(einvoice_of(invoice))
    root = etree.fromstring(written["ubl"])
    assert root.findtext("cbc:DocumentCurrencyCode", None, UBL) == currency.upper()
    assert root.findtext("cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount", None, UBL) == grand_total


def test_a_german_buyer_without_a_buyer_reference_misses_it() -> None:
    invoice = invoice_of([line(0)], buyer_reference=None)
    view = invoice_view(invoice, SELLER, "en_US")
    assert model.missing_fields(model.of_invoice(view, SELLER)) == ["buyer_reference"]
    with pytest.raises(model.EInvoiceFieldMissing) as missing:
        model.require_complete(model.of_invoice(view, SELLER))
    assert missing.value.field == "buyer_reference"


def test_a_seller_without_a_country_misses_it() -> None:
    seller = Seller(name="Nowhere Ltd", tax_id="GB123456789")
    invoice = invoice_of([line(0)], customer=FRENCH_BUSINESS)
    view = invoice_view(invoice, seller, "en_US")
    assert model.missing_fields(model.of_invoice(view, seller))[0] == "seller_country"


@pytest.mark.parametrize(
    ("reason", "rate", "code"),
    [
        ("standard", "19", "S"),
        ("manual", "7", "S"),
        (None, "19", "S"),
        ("manual", "0", "Z"),
        (None, "0", "Z"),
        ("standard", "0", "Z"),
        ("reverse_charge", "0", "AE"),
        ("zero_rated_export", "0", "G"),
        ("exempt", "0", "E"),
    ],
)
def test_each_tax_reason_maps_to_its_vat_category(reason: str | None, rate: str, code: str) -> None:
    category = vat_category(reason, Decimal(rate))
    assert category.code == code
    assert (category.exemption_code is not None) == (code in ("AE", "G", "E"))


def test_a_reason_without_vat_on_a_taxed_line_is_refused() -> None:
    with pytest.raises(InconsistentTaxReason):
        vat_category("reverse_charge", Decimal(19))


# Generated invoices: the XML, the PDF's view and the invoice's columns (what the API
# answers) agree to the minor unit, and both syntaxes pass every rule.

RATES = ("0", "5.5", "7", "19", "20")


@st.composite
def invoices(draw: st.DrawFn) -> Any:
    currency = draw(st.sampled_from(["eur", "usd", "kwd"]))
    step = 10 if currency == "kwd" else 1
    lines = []
    for index in range(draw(st.integers(1, 6))):
        quantity = draw(st.integers(1, 5))
        unit_amount = draw(st.integers(1, 200_000)) * step
        rate = draw(st.sampled_from(RATES))
        amount = quantity * unit_amount
        discount = draw(st.integers(0, amount // step)) * step if draw(st.booleans()) else 0
        tax = round_half_up((amount - discount) * Decimal(rate) / 100 / step) * step
        item = line(index, quantity=quantity, unit_amount=unit_amount, rate=rate, discount=discount)
        item.tax = tax
        lines.append(item)
    invoice = invoice_of(lines, currency=currency, customer=FRENCH_BUSINESS)
    settled = draw(st.integers(0, invoice.total // step)) * step
    paid = draw(st.integers(0, settled // step)) * step
    invoice.amount_paid, invoice.amount_credited = paid, settled - paid
    return invoice


def _amount(root: Any, path: str, namespaces: dict[str, str]) -> Decimal:
    return Decimal(root.xpath(f"string({path})", namespaces=namespaces))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invoices())
def test_generated_invoices_agree_with_their_pdf_and_api_figures_and_pass_every_rule(
    invoice: Any,
) -> None:
    view = invoice_view(invoice, SELLER, "en_US")
    written = both_valid(model.require_complete(model.of_invoice(view, SELLER)))
    exponent = Decimal(10) ** (3 if invoice.currency == "kwd" else 2)
    expected = {
        "BT-106": invoice.subtotal - invoice.discount,
        "BT-109": invoice.total - invoice.tax,
        "BT-110": invoice.tax,
        "BT-112": invoice.total,
        "BT-115": invoice.amount_due,
    }
    settlement = "//ram:SpecifiedTradeSettlementHeaderMonetarySummation/ram:"
    cii_root = etree.fromstring(written["cii"])
    in_cii = {
        term: _amount(cii_root, settlement + element, CII) * exponent
        for term, element in (
            ("BT-106", "LineTotalAmount"),
            ("BT-109", "TaxBasisTotalAmount"),
            ("BT-110", "TaxTotalAmount"),
            ("BT-112", "GrandTotalAmount"),
            ("BT-115", "DuePayableAmount"),
        )
    }
    ubl_root = etree.fromstring(written["ubl"])
    totals = "/*/cac:LegalMonetaryTotal/cbc:"
    in_ubl = {
        "BT-106": _amount(ubl_root, totals + "LineExtensionAmount", UBL) * exponent,
        "BT-109": _amount(ubl_root, totals + "TaxExclusiveAmount", UBL) * exponent,
        "BT-110": _amount(ubl_root, "/*/cac:TaxTotal/cbc:TaxAmount", UBL) * exponent,
        "BT-112": _amount(ubl_root, totals + "TaxInclusiveAmount", UBL) * exponent,
        "BT-115": _amount(ubl_root, totals + "PayableAmount", UBL) * exponent,
    }
    assert in_cii == expected
    assert in_ubl == expected
    # The PDF prints the same total and amount due.
    formatter = Formatter("en_US", invoice.currency)
    printed = {row.label: row.value for row in view.totals}
    assert printed["Total"] == formatter.money(expected["BT-112"])
    assert printed["Amount due"] == formatter.money(expected["BT-115"])
    # BR-CO-10: the lines' nets add up to BT-106.
    nets = cii_root.xpath(
        "//ram:SpecifiedTradeSettlementLineMonetarySummation/ram:LineTotalAmount/text()",
        namespaces=CII,
    )
    assert sum(Decimal(net) for net in nets) * exponent == expected["BT-106"]


# The PDF is Factur-X: PDF/A-3 with the CII e-invoice attached.

# The XMP states the PDF/A part as an element or as an attribute, by who wrote it last.
PDF_A_3 = re.compile(r'pdfaid:part(>|=")3\b')


def _attachment_and_xmp(pdf: bytes) -> tuple[dict[str, list[bytes]], str]:
    reader = PdfReader(io.BytesIO(pdf))
    metadata = reader.trailer["/Root"]["/Metadata"].get_object().get_data().decode("utf-8")
    return reader.attachments, metadata


def test_an_invoice_pdf_is_pdf_a_3_with_its_e_invoice_attached_the_same_every_time() -> None:
    invoice = invoice_of([line(0), line(1, rate="7", discount=500)])
    rendered = render_invoice_pdf(invoice, SELLER, "de_DE")
    attachments, xmp = _attachment_and_xmp(rendered.content)
    assert PDF_A_3.search(xmp)
    assert "<fx:ConformanceLevel>EN 16931</fx:ConformanceLevel>" in xmp
    (xml,) = attachments["factur-x.xml"]
    assert xml == cii.to_cii(einvoice_of(invoice))
    assert_valid(xml, "cii")
    again = render_invoice_pdf(invoice, SELLER, "de_DE")
    assert again.sha256 == rendered.sha256


def test_a_credit_note_pdf_carries_its_own_e_invoice() -> None:
    invoice = invoice_of([line(0), line(1, rate="7")])
    note = make_credit_note(invoice)
    attachments, _ = _attachment_and_xmp(render_credit_note_pdf(note, invoice, SELLER).content)
    (xml,) = attachments["factur-x.xml"]
    assert b"<ram:TypeCode>381</ram:TypeCode>" in xml
    assert_valid(xml, "cii")


def test_without_a_complete_e_invoice_the_pdf_is_a_plain_pdf_a_3() -> None:
    seller = Seller(name="Nowhere Ltd")  # no country, no VAT id
    rendered = render_invoice_pdf(invoice_of([line(0)]), seller)
    attachments, xmp = _attachment_and_xmp(rendered.content)
    assert attachments == {}
    assert PDF_A_3.search(xmp)


@pytest.mark.parametrize(
    ("seller_country", "buyer_vat_id", "buyer_country", "required"),
    [
        ("DE", "FR40303265045", "FR", True),
        ("de", "DE123456789", "de", True),
        ("DE", None, "FR", False),  # a consumer
        ("DE", "GB123456789", "GB", False),  # a business outside the EU
        (None, "FR40303265045", "FR", False),  # a seller not configured for e-invoices
        ("GB", "FR40303265045", "FR", False),  # a seller outside the EU
    ],
)
def test_an_e_invoice_is_required_between_businesses_in_the_eu(
    seller_country: str | None, buyer_vat_id: str | None, buyer_country: str, required: bool
) -> None:
    assert model.intra_eu_b2b(seller_country, buyer_vat_id, buyer_country) is required
