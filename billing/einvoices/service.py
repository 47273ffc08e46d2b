"""E-invoices for the API and the finalization check.

`invoice_einvoice` / `credit_note_einvoice` answer the XML of one document in one syntax,
scoped to a customer as the PDFs are; `check_before_finalizing` refuses a draft whose
e-invoice could not be valid when one is required (EINVOICE_REQUIRED): `always`, or with
`eu_business` when a seller established in the EU invoices a business in the EU (a VAT id
and an address in a member state), where e-invoicing between businesses is the rule or
becoming it; `never` (the default) checks nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from billing.documents import documents
from billing.documents.view import (
    credit_note_view,
    current_buyer,
    invoice_view,
    postal_address,
)
from billing.einvoices import cii, model, ubl
from billing.einvoices.amounts import AmountNotRepresentable
from billing.einvoices.categories import InconsistentTaxReason
from billing.extensions import db
from billing.models import CreditNote, Invoice, InvoiceDiscount
from billing.platform import clock, context
from billing.platform.errors import InvalidRequest, NotFound

SYNTAXES: dict[str, Callable[[model.EInvoice], bytes]] = {"cii": cii.to_cii, "ubl": ubl.to_ubl}
XML = "application/xml"


class EInvoiceFieldMissing(InvalidRequest):
    """A field a valid e-invoice needs is not set; `param` names it."""

    code = "einvoice_field_missing"


class EInvoiceNotPossible(InvalidRequest):
    """The document's own figures cannot be stated in EN 16931 (a tax reason contradicting
    its rate, an amount finer than two decimals)."""

    code = "einvoice_not_possible"


@dataclass(frozen=True)
class EInvoiceXml:
    content: bytes
    filename: str


def _locale(invoice: Invoice) -> str:
    return invoice.customer.locale or "en_US"


def _complete(build: Callable[[], model.EInvoice]) -> model.EInvoice:
    try:
        return model.require_complete(build())
    except model.EInvoiceFieldMissing as missing:
        raise EInvoiceFieldMissing(str(missing), param=missing.field) from missing
    except (InconsistentTaxReason, AmountNotRepresentable) as impossible:
        raise EInvoiceNotPossible(str(impossible), param="lines") from impossible


def of_invoice(invoice: Invoice, discounts: Sequence[InvoiceDiscount]) -> model.EInvoice:
    """The complete e-invoice of a finalized invoice (customer and lines loaded)."""
    seller = documents.seller()
    view = invoice_view(invoice, seller, _locale(invoice), discounts=discounts)
    return _complete(lambda: model.of_invoice(view, seller))


def of_credit_note(credit_note: CreditNote, invoice: Invoice) -> model.EInvoice:
    seller = documents.seller()
    view = credit_note_view(credit_note, invoice, seller, _locale(invoice))
    return _complete(lambda: model.of_credit_note(view, seller))


def _syntax(syntax: str) -> Callable[[model.EInvoice], bytes]:
    write = SYNTAXES.get(syntax)
    if write is None:
        raise InvalidRequest("syntax must be cii or ubl", param="syntax")
    return write


def invoice_einvoice(invoice_id: str, syntax: str, *, customer_scope: str | None) -> EInvoiceXml:
    write = _syntax(syntax)
    session = db.session()
    paper = documents.INVOICES.load(session, invoice_id)
    if paper is None or customer_scope not in (None, paper.invoice.customer_id):
        raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
    if paper.invoice.status == "draft":
        raise documents.InvoiceNotFinalized("a draft invoice has no e-invoice yet", param="id")
    content = write(of_invoice(paper.invoice, paper.discounts))
    session.rollback()
    return EInvoiceXml(content, f"invoice-{paper.invoice.number}.{syntax}.xml")


def credit_note_einvoice(
    credit_note_id: str, syntax: str, *, customer_scope: str | None
) -> EInvoiceXml:
    write = _syntax(syntax)
    session = db.session()
    paper = documents.CREDIT_NOTES.load(session, credit_note_id)
    if paper is None or customer_scope not in (None, paper.credit_note.customer_id):
        raise NotFound(f"No such credit note: '{credit_note_id}'", param="id")
    content = write(of_credit_note(paper.credit_note, paper.invoice))
    session.rollback()
    return EInvoiceXml(content, f"credit-note-{paper.credit_note.number}.{syntax}.xml")


def required() -> bool:
    """Whether any invoice may need to yield a valid e-invoice to be finalized."""
    return context.settings().einvoice_required != "never"


def refusals_before_finalizing(
    session: Session, invoice_ids: Sequence[str]
) -> dict[str, EInvoiceFieldMissing | EInvoiceNotPossible]:
    """`check_before_finalizing` for each of a billing run's drafts (stored with their
    lines and discounts), answering the refused ones by id instead of raising: one
    customer's missing address must not stop everyone else's invoice."""
    refused: dict[str, EInvoiceFieldMissing | EInvoiceNotPossible] = {}
    if not required():
        return refused
    for invoice_id in invoice_ids:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        try:
            check_before_finalizing(session, invoice)
        except (EInvoiceFieldMissing, EInvoiceNotPossible) as refusal:
            refused[invoice_id] = refusal
    return refused


def check_draft_before_finalizing(session: Session, invoice_id: str) -> None:
    """check_before_finalizing for a draft known by its id: read only when a setting may
    require its e-invoice."""
    if context.settings().einvoice_required == "never":
        return
    invoice = session.get(Invoice, invoice_id)
    assert invoice is not None  # the caller holds its row lock
    check_before_finalizing(session, invoice)


def check_before_finalizing(session: Session, invoice: Invoice) -> None:
    """Raise EInvoiceFieldMissing (422, `param` the field) when the draft, finalized now
    with today's parties, could not yield a valid e-invoice and one is required."""
    seller = documents.seller()
    # Decided from the current parties (what finalizing will keep) before any view is
    # built: most invoices need no e-invoice, and finalizing is the hottest request.
    required = context.settings().einvoice_required
    if required == "never":
        return
    buyer = current_buyer(invoice.customer)
    if required == "eu_business" and not model.intra_eu_b2b(
        seller.country, buyer.get("tax_id"), postal_address(buyer.get("address")).country
    ):
        return
    paper = documents.INVOICES.load(session, invoice.id)
    assert paper is not None  # the caller holds its row lock
    view = invoice_view(paper.invoice, seller, _locale(invoice), discounts=paper.discounts)
    # As finalization will date and number it.
    view = dataclasses.replace(view, issued_on=clock.now().date(), number="DRAFT")
    _complete(lambda: model.of_invoice(view, seller))
