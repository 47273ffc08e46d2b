"""An e-invoice as EN 16931 sees it, made from the view the PDF is made from.

Pure: `of_invoice(view, seller)` and `of_credit_note(view, seller)` read the view's parties
and figures (billing.documents.view), never the ORM objects, so the XML states exactly the
amounts the PDF prints. `missing_fields` says what keeps one from being valid.

How the amounts map (EN 16931 business terms):
- each line's net (BT-131) is its amount less its share of the discounts, that share given
  as a line allowance (BG-27, reason code 95); the invoice's tax was computed per line on
  those nets, so the VAT breakdown (BG-23) per category and rate sums them exactly, and no
  document-level allowance (BG-20) is needed: BT-106 = Σ BT-131 = BT-109;
- BT-110 is the invoice's tax (the sum of the lines' rounded taxes), BT-112 its total;
- BT-113 (prepaid) = amount paid + balance applied + amount credited, BT-115 what is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from billing.documents.view import (
    CreditNoteView,
    DocumentFigures,
    InvoiceView,
    LineFigures,
    PartyView,
    PostalAddress,
    Seller,
)
from billing.einvoices.categories import VatCategory, vat_category
from billing.taxes.rules import vat_identifier

INVOICE = "380"
CREDIT_NOTE = "381"
EN16931 = "urn:cen.eu:en16931:2017"
XRECHNUNG = "urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0"

# Member states of the EU (ISO 3166-1 alpha-2; Greece is GR here, EL only in VAT ids).
EU_COUNTRIES = frozenset(
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split()
)


class EInvoiceFieldMissing(ValueError):
    """A field a valid e-invoice needs is empty; `field` names it (`seller_city`, ...)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"the e-invoice needs {field.replace('_', ' ')}, which is not set")
        self.field = field


class NotIssued(ValueError):
    """A draft, or a credit note not issued: no e-invoice yet."""


@dataclass(frozen=True)
class Party:
    name: str
    postal: PostalAddress
    vat_id: str | None
    email: str | None
    phone: str | None = None


@dataclass(frozen=True)
class PaymentMeans:
    code: str  # UNCL 4461: 58 SEPA credit transfer, 30 credit transfer, 48 bank card
    iban: str | None = None
    bic: str | None = None


@dataclass(frozen=True)
class Line:
    figures: LineFigures
    category: VatCategory
    quantity: int
    price: Decimal  # BT-146 in minor units (may be fractional for a credit note's line)


@dataclass(frozen=True)
class VatBreakdown:
    category: VatCategory
    rate: Decimal
    taxable: int  # BT-116
    tax: int  # BT-117


@dataclass(frozen=True)
class EInvoice:
    type_code: str
    number: str
    issued_on: date
    due_on: date | None
    currency: str  # ISO 4217, upper case
    seller: Party
    buyer: Party
    lines: tuple[Line, ...]
    figures: DocumentFigures
    buyer_reference: str | None = None
    payment_means: PaymentMeans | None = None
    payment_terms: str | None = None
    note: str | None = None
    # BT-25 / BT-26: the invoice a credit note corrects.
    preceding_invoice: str | None = None
    preceding_invoice_on: date | None = None

    @property
    def customization_id(self) -> str:
        """XRechnung for a German buyer (what German recipients validate against), else
        plain EN 16931."""
        return XRECHNUNG if self.buyer.postal.country == "DE" else EN16931

    @property
    def is_xrechnung(self) -> bool:
        return self.customization_id == XRECHNUNG

    def vat_breakdown(self) -> tuple[VatBreakdown, ...]:
        """One row per category and rate, the sums of its lines' nets and taxes."""
        rows: dict[tuple[str, Decimal], list[int]] = {}
        categories: dict[tuple[str, Decimal], VatCategory] = {}
        for line in self.lines:
            key = (line.category.code, line.figures.tax_rate.normalize())
            categories[key] = line.category
            sums = rows.setdefault(key, [0, 0])
            sums[0] += line.figures.net
            sums[1] += line.figures.tax
        return tuple(
            VatBreakdown(categories[key], key[1], taxable, tax)
            for key, (taxable, tax) in sorted(rows.items())
        )


def _party(view: PartyView, phone: str | None = None) -> Party:
    return Party(
        name=view.name, postal=view.postal, vat_id=view.tax_id, email=view.email, phone=phone
    )


def _buyer(view: PartyView) -> Party:
    """Only a VAT id is the buyer's VAT identifier (BT-48): an EIN or an ABN is not."""
    return Party(
        name=view.name,
        postal=view.postal,
        vat_id=vat_identifier(view.tax_id_type, view.tax_id),
        email=view.email,
        phone=None,
    )


def _lines(figures: DocumentFigures) -> tuple[Line, ...]:
    lines = []
    for line in figures.lines:
        quantity, price = line.quantity or 1, Decimal(line.amount)
        if line.unit_amount is not None:
            price = Decimal(line.unit_amount)
        elif line.quantity:
            price = Decimal(line.amount) / line.quantity
        lines.append(Line(line, vat_category(line.tax_reason, line.tax_rate), quantity, price))
    return tuple(lines)


def _payment_means(collection_method: str, seller: Seller, currency: str) -> PaymentMeans | None:
    if collection_method == "charge_automatically":
        return PaymentMeans("48")
    if seller.iban:
        # SEPA credit transfer only moves euros.
        return PaymentMeans("58" if currency == "EUR" else "30", seller.iban, seller.bic)
    return None


def of_invoice(view: InvoiceView, seller: Seller) -> EInvoice:
    """The e-invoice of a finalized invoice, from its PDF's view."""
    if view.issued_on is None:
        raise NotIssued("a draft has no e-invoice")
    currency = view.figures.currency.upper()
    terms = None
    if view.figures.amount_due > 0 and view.payment.details:
        terms = "\n".join(view.payment.details)
    elif view.figures.amount_due > 0:
        terms = view.payment.headline
    return EInvoice(
        type_code=INVOICE,
        number=view.number,
        issued_on=view.issued_on,
        due_on=view.due_on,
        currency=currency,
        seller=_party(view.seller, seller.phone),
        buyer=_buyer(view.buyer),
        lines=_lines(view.figures),
        figures=view.figures,
        buyer_reference=view.buyer_reference,
        payment_means=_payment_means(view.collection_method, seller, currency),
        payment_terms=terms,
        note=view.description,
    )


def of_credit_note(view: CreditNoteView, seller: Seller) -> EInvoice:
    """The e-invoice of a credit note, referring to the invoice it corrects (BT-25)."""
    if view.issued_on is None:
        raise NotIssued("a credit note not issued has no e-invoice")
    note = "\n".join(part for part in (view.reason, view.memo) if part) or None
    return EInvoice(
        type_code=CREDIT_NOTE,
        number=view.number,
        issued_on=view.issued_on,
        due_on=None,
        currency=view.figures.currency.upper(),
        seller=_party(view.seller, seller.phone),
        buyer=_buyer(view.buyer),
        lines=_lines(view.figures),
        figures=view.figures,
        buyer_reference=view.buyer_reference,
        note=note,
        preceding_invoice=view.invoice_number,
        preceding_invoice_on=view.invoice_issued_on,
    )


def intra_eu_b2b(
    seller_country: str | None, buyer_vat_id: str | None, buyer_country: str | None
) -> bool:
    """A seller established in the EU invoicing a business in the EU (a VAT id, an address
    in a member state): the case the EU's e-invoicing mandates (Germany's since 2025,
    France's, ViDA) bind."""
    return (
        (seller_country or "").upper() in EU_COUNTRIES
        and bool(buyer_vat_id)
        and (buyer_country or "").upper() in EU_COUNTRIES
    )


def missing_fields(einvoice: EInvoice) -> list[str]:
    """The fields, by setting or API name, without which the e-invoice breaks a rule of
    EN 16931 (or of XRechnung for a German buyer); empty when it can be valid."""
    seller, buyer = einvoice.seller, einvoice.buyer
    wanted: list[tuple[str, object]] = [
        ("seller_name", seller.name),  # BR-6
        ("seller_country", seller.postal.country),  # BR-9
        ("seller_tax_id", seller.vat_id),  # BR-S-2, BR-Z-2, BR-E-2, BR-AE-2, BR-G-2
        ("customer.name", buyer.name),  # BR-7
        ("customer.address.country", buyer.postal.country),  # BR-11
    ]
    if any(line.category.code == "AE" for line in einvoice.lines):
        wanted.append(("customer.tax_id", buyer.vat_id))  # BR-AE-2
    if einvoice.is_xrechnung:
        wanted += [
            ("buyer_reference", einvoice.buyer_reference),  # BR-DE-15
            ("seller_street", seller.postal.street),
            ("seller_city", seller.postal.city),  # BR-DE-3
            ("seller_postal_code", seller.postal.postal_code),  # BR-DE-4
            ("seller_email", seller.email),  # BR-DE-7
            ("seller_phone", seller.phone),  # BR-DE-6
            ("customer.address.city", buyer.postal.city),  # BR-DE-8
            ("customer.address.postal_code", buyer.postal.postal_code),  # BR-DE-9
        ]
        if einvoice.type_code == INVOICE:
            wanted.append(("seller_iban", einvoice.payment_means))  # BR-DE-1
    return [name for name, value in wanted if not value]


def require_complete(einvoice: EInvoice) -> EInvoice:
    missing = missing_fields(einvoice)
    if missing:
        raise EInvoiceFieldMissing(missing[0])
    return einvoice
