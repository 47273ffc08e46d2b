"""OASIS UBL 2.1 Invoice and CreditNote, EN 16931 (XRechnung 3.0 for a German buyer).

Element order follows the UBL 2.1 schemas (the XSD checks it in the tests).
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from billing.einvoices.amounts import amount_text, percent_text, price_text
from billing.einvoices.categories import VatCategory
from billing.einvoices.model import CREDIT_NOTE, EInvoice, Party

CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
INVOICE_NS = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
CREDIT_NOTE_NS = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
NSMAP = {"cac": CAC, "cbc": CBC}
# XRechnung is exchanged under the Peppol BIS Billing business process.
PEPPOL_BILLING = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"
DISCOUNT_REASON_CODE = "95"


def _el(parent: Any, tag: str, text: str | None = None, **attributes: str) -> Any:
    prefix, name = tag.split(":")
    element = etree.SubElement(parent, f"{{{NSMAP[prefix]}}}{name}", attributes)
    if text is not None:
        element.text = text
    return element


def _party(parent: Any, tag: str, party: Party, *, contact: bool) -> None:
    element = _el(_el(parent, tag), "cac:Party")
    if party.email:
        # BT-34 / BT-49, which XRechnung requires: the party's electronic address.
        _el(element, "cbc:EndpointID", party.email, schemeID="EM")
    postal = party.postal
    address = _el(element, "cac:PostalAddress")
    if postal.street:
        _el(address, "cbc:StreetName", postal.street)
    if postal.additional:
        _el(address, "cbc:AdditionalStreetName", postal.additional)
    if postal.city:
        _el(address, "cbc:CityName", postal.city)
    if postal.postal_code:
        _el(address, "cbc:PostalZone", postal.postal_code)
    if postal.region:
        _el(address, "cbc:CountrySubentity", postal.region)
    _el(_el(address, "cac:Country"), "cbc:IdentificationCode", postal.country or "")
    if party.vat_id:
        scheme = _el(element, "cac:PartyTaxScheme")
        _el(scheme, "cbc:CompanyID", party.vat_id)
        _el(_el(scheme, "cac:TaxScheme"), "cbc:ID", "VAT")
    _el(_el(element, "cac:PartyLegalEntity"), "cbc:RegistrationName", party.name)
    if contact and (party.phone or party.email):
        person = _el(element, "cac:Contact")
        _el(person, "cbc:Name", party.name)
        if party.phone:
            _el(person, "cbc:Telephone", party.phone)
        if party.email:
            _el(person, "cbc:ElectronicMail", party.email)


def _category(parent: Any, tag: str, category: VatCategory, percent: str, *, why: bool) -> None:
    element = _el(parent, tag)
    _el(element, "cbc:ID", category.code)
    _el(element, "cbc:Percent", percent)
    if why and category.exemption_code:
        _el(element, "cbc:TaxExemptionReasonCode", category.exemption_code)
    if why and category.exemption_reason:
        _el(element, "cbc:TaxExemptionReason", category.exemption_reason)
    _el(_el(element, "cac:TaxScheme"), "cbc:ID", "VAT")


def to_ubl(einvoice: EInvoice) -> bytes:
    """The e-invoice as a UBL Invoice, or a UBL CreditNote for a credit note."""
    credit = einvoice.type_code == CREDIT_NOTE
    currency = einvoice.currency
    figures = einvoice.figures

    def money(parent: Any, tag: str, minor: int) -> None:
        _el(parent, tag, amount_text(minor, currency), currencyID=currency)

    root_ns = CREDIT_NOTE_NS if credit else INVOICE_NS
    nsmap: dict[str | None, str] = {None: root_ns, "cac": CAC, "cbc": CBC}
    root = etree.Element(f"{{{root_ns}}}{'CreditNote' if credit else 'Invoice'}", nsmap=nsmap)
    _el(root, "cbc:CustomizationID", einvoice.customization_id)
    if einvoice.is_xrechnung:
        _el(root, "cbc:ProfileID", PEPPOL_BILLING)
    _el(root, "cbc:ID", einvoice.number)
    _el(root, "cbc:IssueDate", einvoice.issued_on.isoformat())
    if einvoice.due_on and not credit:
        _el(root, "cbc:DueDate", einvoice.due_on.isoformat())
    _el(root, "cbc:CreditNoteTypeCode" if credit else "cbc:InvoiceTypeCode", einvoice.type_code)
    if einvoice.note:
        _el(root, "cbc:Note", einvoice.note)
    _el(root, "cbc:DocumentCurrencyCode", currency)
    if einvoice.buyer_reference:
        _el(root, "cbc:BuyerReference", einvoice.buyer_reference)
    if einvoice.preceding_invoice:
        reference = _el(_el(root, "cac:BillingReference"), "cac:InvoiceDocumentReference")
        _el(reference, "cbc:ID", einvoice.preceding_invoice)
        if einvoice.preceding_invoice_on:
            _el(reference, "cbc:IssueDate", einvoice.preceding_invoice_on.isoformat())
    _party(root, "cac:AccountingSupplierParty", einvoice.seller, contact=True)
    _party(root, "cac:AccountingCustomerParty", einvoice.buyer, contact=False)
    means = einvoice.payment_means
    if means is not None:
        payment = _el(root, "cac:PaymentMeans")
        _el(payment, "cbc:PaymentMeansCode", means.code)
        if means.iban:
            account = _el(payment, "cac:PayeeFinancialAccount")
            _el(account, "cbc:ID", means.iban.replace(" ", ""))
            if means.bic:
                _el(_el(account, "cac:FinancialInstitutionBranch"), "cbc:ID", means.bic)
    if einvoice.payment_terms:
        _el(_el(root, "cac:PaymentTerms"), "cbc:Note", einvoice.payment_terms)

    tax_total = _el(root, "cac:TaxTotal")
    money(tax_total, "cbc:TaxAmount", figures.tax)  # BT-110
    for row in einvoice.vat_breakdown():
        subtotal = _el(tax_total, "cac:TaxSubtotal")
        money(subtotal, "cbc:TaxableAmount", row.taxable)
        money(subtotal, "cbc:TaxAmount", row.tax)
        _category(subtotal, "cac:TaxCategory", row.category, percent_text(row.rate), why=True)

    totals = _el(root, "cac:LegalMonetaryTotal")
    money(totals, "cbc:LineExtensionAmount", figures.net_total)  # BT-106
    money(totals, "cbc:TaxExclusiveAmount", figures.net_total)  # BT-109
    money(totals, "cbc:TaxInclusiveAmount", figures.total)  # BT-112
    if figures.prepaid:
        money(totals, "cbc:PrepaidAmount", figures.prepaid)  # BT-113
    money(totals, "cbc:PayableAmount", figures.amount_due)  # BT-115

    for number, line in enumerate(einvoice.lines, start=1):
        element = _el(root, "cac:CreditNoteLine" if credit else "cac:InvoiceLine")
        _el(element, "cbc:ID", str(number))
        quantity_tag = "cbc:CreditedQuantity" if credit else "cbc:InvoicedQuantity"
        _el(element, quantity_tag, str(line.quantity), unitCode="C62")
        money(element, "cbc:LineExtensionAmount", line.figures.net)
        if line.figures.discount:
            allowance = _el(element, "cac:AllowanceCharge")
            _el(allowance, "cbc:ChargeIndicator", "false")
            _el(allowance, "cbc:AllowanceChargeReasonCode", DISCOUNT_REASON_CODE)
            _el(allowance, "cbc:AllowanceChargeReason", "Discount")
            money(allowance, "cbc:Amount", line.figures.discount)
        item = _el(element, "cac:Item")
        _el(item, "cbc:Name", line.figures.description)
        percent = percent_text(line.figures.tax_rate)
        _category(item, "cac:ClassifiedTaxCategory", line.category, percent, why=False)
        price = _el(element, "cac:Price")
        _el(price, "cbc:PriceAmount", price_text(line.price, currency), currencyID=currency)
    content: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return content
