"""UN/CEFACT Cross Industry Invoice (D16B), the Factur-X / ZUGFeRD EN 16931 profile.

Element order follows the CII schema (the XSD checks it in the tests).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from lxml import etree

from billing.einvoices.amounts import amount_text, percent_text, price_text
from billing.einvoices.model import EInvoice, Party

RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
UDT = "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
QDT = "urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
NSMAP = {"rsm": RSM, "ram": RAM, "udt": UDT, "qdt": QDT}
# The Factur-X profile that is EN 16931 itself (its "comfort" level).
FACTURX_EN16931 = "urn:cen.eu:en16931:2017"
# Line allowance reason (UNCL 5189): a discount.
DISCOUNT_REASON_CODE = "95"


def _el(parent: Any, tag: str, text: str | None = None, **attributes: str) -> Any:
    prefix, name = tag.split(":")
    element = etree.SubElement(parent, f"{{{NSMAP[prefix]}}}{name}", attributes)
    if text is not None:
        element.text = text
    return element


def _date(parent: Any, tag: str, day: date, data_type: str = "udt") -> None:
    _el(_el(parent, tag), f"{data_type}:DateTimeString", day.strftime("%Y%m%d"), format="102")


def _party(parent: Any, tag: str, party: Party, *, contact: bool) -> None:
    element = _el(parent, tag)
    _el(element, "ram:Name", party.name)
    if contact and (party.phone or party.email):
        trade_contact = _el(element, "ram:DefinedTradeContact")
        _el(trade_contact, "ram:PersonName", party.name)
        if party.phone:
            phone = _el(trade_contact, "ram:TelephoneUniversalCommunication")
            _el(phone, "ram:CompleteNumber", party.phone)
        if party.email:
            mail = _el(trade_contact, "ram:EmailURIUniversalCommunication")
            _el(mail, "ram:URIID", party.email)
    postal = party.postal
    address = _el(element, "ram:PostalTradeAddress")
    if postal.postal_code:
        _el(address, "ram:PostcodeCode", postal.postal_code)
    if postal.street:
        _el(address, "ram:LineOne", postal.street)
    if postal.additional:
        _el(address, "ram:LineTwo", postal.additional)
    if postal.city:
        _el(address, "ram:CityName", postal.city)
    _el(address, "ram:CountryID", postal.country or "")
    if postal.region:
        _el(address, "ram:CountrySubDivisionName", postal.region)
    if party.email:
        _el(_el(element, "ram:URIUniversalCommunication"), "ram:URIID", party.email, schemeID="EM")
    if party.vat_id:
        _el(_el(element, "ram:SpecifiedTaxRegistration"), "ram:ID", party.vat_id, schemeID="VA")


def to_cii(einvoice: EInvoice) -> bytes:
    """The e-invoice as CII XML (UTF-8, with declaration)."""
    currency = einvoice.currency
    figures = einvoice.figures

    def money(minor: int) -> str:
        return amount_text(minor, currency)

    root = etree.Element(f"{{{RSM}}}CrossIndustryInvoice", nsmap=NSMAP)
    context = _el(root, "rsm:ExchangedDocumentContext")
    _el(_el(context, "ram:GuidelineSpecifiedDocumentContextParameter"), "ram:ID", FACTURX_EN16931)

    document = _el(root, "rsm:ExchangedDocument")
    _el(document, "ram:ID", einvoice.number)
    _el(document, "ram:TypeCode", einvoice.type_code)
    _date(document, "ram:IssueDateTime", einvoice.issued_on)
    if einvoice.note:
        _el(_el(document, "ram:IncludedNote"), "ram:Content", einvoice.note)

    transaction = _el(root, "rsm:SupplyChainTradeTransaction")
    for number, line in enumerate(einvoice.lines, start=1):
        item = _el(transaction, "ram:IncludedSupplyChainTradeLineItem")
        _el(_el(item, "ram:AssociatedDocumentLineDocument"), "ram:LineID", str(number))
        _el(_el(item, "ram:SpecifiedTradeProduct"), "ram:Name", line.figures.description)
        agreement = _el(item, "ram:SpecifiedLineTradeAgreement")
        price = _el(agreement, "ram:NetPriceProductTradePrice")
        _el(price, "ram:ChargeAmount", price_text(line.price, currency))
        delivery = _el(item, "ram:SpecifiedLineTradeDelivery")
        _el(delivery, "ram:BilledQuantity", str(line.quantity), unitCode="C62")
        settlement = _el(item, "ram:SpecifiedLineTradeSettlement")
        tax = _el(settlement, "ram:ApplicableTradeTax")
        _el(tax, "ram:TypeCode", "VAT")
        _el(tax, "ram:CategoryCode", line.category.code)
        _el(tax, "ram:RateApplicablePercent", percent_text(line.figures.tax_rate))
        if line.figures.discount:
            allowance = _el(settlement, "ram:SpecifiedTradeAllowanceCharge")
            _el(_el(allowance, "ram:ChargeIndicator"), "udt:Indicator", "false")
            _el(allowance, "ram:ActualAmount", money(line.figures.discount))
            _el(allowance, "ram:ReasonCode", DISCOUNT_REASON_CODE)
            _el(allowance, "ram:Reason", "Discount")
        summation = _el(settlement, "ram:SpecifiedTradeSettlementLineMonetarySummation")
        _el(summation, "ram:LineTotalAmount", money(line.figures.net))

    agreement = _el(transaction, "ram:ApplicableHeaderTradeAgreement")
    if einvoice.buyer_reference:
        _el(agreement, "ram:BuyerReference", einvoice.buyer_reference)
    _party(agreement, "ram:SellerTradeParty", einvoice.seller, contact=True)
    _party(agreement, "ram:BuyerTradeParty", einvoice.buyer, contact=False)
    _el(transaction, "ram:ApplicableHeaderTradeDelivery")

    settlement = _el(transaction, "ram:ApplicableHeaderTradeSettlement")
    _el(settlement, "ram:InvoiceCurrencyCode", currency)
    means = einvoice.payment_means
    if means is not None:
        payment = _el(settlement, "ram:SpecifiedTradeSettlementPaymentMeans")
        _el(payment, "ram:TypeCode", means.code)
        if means.iban:
            account = _el(payment, "ram:PayeePartyCreditorFinancialAccount")
            _el(account, "ram:IBANID", means.iban.replace(" ", ""))
        if means.bic:
            bank = _el(payment, "ram:PayeeSpecifiedCreditorFinancialInstitution")
            _el(bank, "ram:BICID", means.bic)
    for row in einvoice.vat_breakdown():
        tax = _el(settlement, "ram:ApplicableTradeTax")
        _el(tax, "ram:CalculatedAmount", money(row.tax))
        _el(tax, "ram:TypeCode", "VAT")
        if row.category.exemption_reason:
            _el(tax, "ram:ExemptionReason", row.category.exemption_reason)
        _el(tax, "ram:BasisAmount", money(row.taxable))
        _el(tax, "ram:CategoryCode", row.category.code)
        if row.category.exemption_code:
            _el(tax, "ram:ExemptionReasonCode", row.category.exemption_code)
        _el(tax, "ram:RateApplicablePercent", percent_text(row.rate))
    if einvoice.payment_terms or einvoice.due_on:
        terms = _el(settlement, "ram:SpecifiedTradePaymentTerms")
        if einvoice.payment_terms:
            _el(terms, "ram:Description", einvoice.payment_terms)
        if einvoice.due_on:
            _date(terms, "ram:DueDateDateTime", einvoice.due_on)
    totals = _el(settlement, "ram:SpecifiedTradeSettlementHeaderMonetarySummation")
    _el(totals, "ram:LineTotalAmount", money(figures.net_total))  # BT-106
    _el(totals, "ram:TaxBasisTotalAmount", money(figures.net_total))  # BT-109
    _el(totals, "ram:TaxTotalAmount", money(figures.tax), currencyID=currency)  # BT-110
    _el(totals, "ram:GrandTotalAmount", money(figures.total))  # BT-112
    _el(totals, "ram:TotalPrepaidAmount", money(figures.prepaid))  # BT-113
    _el(totals, "ram:DuePayableAmount", money(figures.amount_due))  # BT-115
    if einvoice.preceding_invoice:
        reference = _el(settlement, "ram:InvoiceReferencedDocument")
        _el(reference, "ram:IssuerAssignedID", einvoice.preceding_invoice)
        if einvoice.preceding_invoice_on:
            _date(reference, "ram:FormattedIssueDateTime", einvoice.preceding_invoice_on, "qdt")
    content: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return content
