"""Credit note PDFs: `render_credit_note_pdf(credit_note, invoice, seller, locale)`.

Pure, as the invoice's: the credit note (its `.lines` loaded) and the invoice it corrects
(its `.customer` loaded) become a plain view model (`billing.documents.view`), and the
process's one warm renderer (`billing.documents.invoice_pdf.renderer`, with its fetcher
that fetches nothing beyond the template folder) turns it into a PDF with
credit_note.html and the invoice's stylesheets.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from billing.documents.invoice_pdf import RenderedPdf, Seller, logo_data_uri, rendered, renderer
from billing.documents.view import credit_note_view
from billing.einvoices import model as einvoice
from billing.einvoices.facturx_pdf import factur_x

if TYPE_CHECKING:
    from billing.models import CreditNote, Invoice

# Bump when credit_note.html, invoice.css, fonts.css or the fonts change: stored PDFs
# record it, and it is part of every credit note's fingerprint.
# credit-note-2: PDF/A-3b, with the CII e-invoice embedded (Factur-X) when it is complete.
TEMPLATE_VERSION = "credit-note-2"
TEMPLATE = "credit_note.html"


def document_identifier(credit_note: CreditNote) -> bytes:
    """The PDF's /ID: the same for every rendering of one credit note, never random."""
    key = f"{credit_note.id}|{credit_note.number}|{TEMPLATE_VERSION}".encode()
    return hashlib.sha256(key).hexdigest()[:32].encode("ascii")


def render_credit_note_pdf(
    credit_note: CreditNote, invoice: Invoice, seller: Seller, locale: str = "en_US"
) -> RenderedPdf:
    logo = logo_data_uri(seller.logo_path) if seller.logo_path else None
    view = credit_note_view(credit_note, invoice, seller, locale, logo_uri=logo)
    pdf = renderer().pdf(
        view, document_identifier(credit_note), template=TEMPLATE, version=TEMPLATE_VERSION
    )
    content = factur_x(
        pdf,
        lambda: einvoice.of_credit_note(view, seller),
        moment=credit_note.issued_at,
        title=f"Credit note {view.number}",
        author=view.seller.name,
        lang=view.lang,
    )
    return rendered(content, TEMPLATE_VERSION)
