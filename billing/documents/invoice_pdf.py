"""Invoice PDFs: `render_invoice_pdf(invoice, seller, locale)`, and the renderer every
document (invoices, credit notes: billing.documents.credit_note_pdf) shares.

Pure: no database session and no Flask app. The invoice (an ORM `Invoice` with `.customer`
and `.lines` loaded) becomes a plain view model first (`billing.documents.view`), then one
warm, module-level renderer turns it into a PDF: its font configuration, parsed
stylesheets, shipped font and Jinja2 environment are made once per process, so every
render after the first one skips that work. The same invoice always gives the same bytes.

The renderer fetches nothing beyond its own template folder and data: URIs
(`billing.documents.fetcher`), and customer text is escaped by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import weasyprint
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from weasyprint.text.fonts import FontConfiguration

from billing.documents.fetcher import TEMPLATES_DIR, TemplateOnlyFetcher
from billing.documents.view import Seller, invoice_view
from billing.einvoices import model as einvoice
from billing.einvoices.facturx_pdf import factur_x

if TYPE_CHECKING:
    from billing.models import Invoice, InvoiceDiscount

# Bump when invoice.html, invoice.css, fonts.css or the fonts change: stored PDFs record it.
# invoice-5: PDF/A-3b, with the CII e-invoice embedded (Factur-X) when it is complete.
TEMPLATE_VERSION = "invoice-5"
RENDERER_VERSION = f"weasyprint {weasyprint.__version__}"
STYLESHEETS = ("fonts.css", "invoice.css")
# Archivable, and the PDF/A flavour Factur-X requires for the embedded XML.
PDF_VARIANT = "pdf/a-3b"
LOGO_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}
LOGO_TYPES[".jpeg"] = "image/jpeg"


@dataclass(frozen=True)
class RenderedPdf:
    content: bytes
    sha256: str  # hex of content
    template_version: str
    renderer_version: str


@lru_cache(maxsize=8)
def logo_data_uri(path: str) -> str:
    """The logo file as a data: URI, read once per process and path."""
    media_type = LOGO_TYPES.get(Path(path).suffix.lower())
    if media_type is None:
        raise ValueError(f"the seller's logo must be PNG, SVG or JPEG: {path}")
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:{media_type};base64,{encoded}"


class DocumentRenderer:
    """Everything that costs to set up, made once: reuse one instance for every render of
    every kind of document. Each kind is one HTML template; they share the stylesheets."""

    def __init__(self, templates: Path = TEMPLATES_DIR) -> None:
        self.templates = templates
        self.base_url = templates.as_uri() + "/"
        self.fetcher = TemplateOnlyFetcher(templates)
        self.font_config = FontConfiguration()
        self.environment = Environment(
            loader=FileSystemLoader(templates),
            autoescape=True,
            undefined=StrictUndefined,
            auto_reload=False,
        )
        # Parsing the CSS also loads the shipped fonts into this font configuration.
        self.stylesheets = [
            weasyprint.CSS(
                filename=str(templates / name),
                url_fetcher=self.fetcher,
                font_config=self.font_config,
            )
            for name in STYLESHEETS
        ]
        # Decoded images by URL (the logo): bounded, since nothing else may be fetched.
        self.image_cache: dict[str, Any] = {}
        # Pango's font map is shared by every render: one render at a time per process.
        self.lock = threading.Lock()

    def html(
        self, view: Any, template: str = "invoice.html", version: str = TEMPLATE_VERSION
    ) -> str:
        generator = f"billing {version}, {RENDERER_VERSION}"
        return self.environment.get_template(template).render(v=view, generator=generator)

    def pdf(
        self,
        view: Any,
        identifier: bytes,
        template: str = "invoice.html",
        version: str = TEMPLATE_VERSION,
    ) -> bytes:
        html = self.html(view, template, version)
        with self.lock:
            document = weasyprint.HTML(
                string=html, base_url=self.base_url, url_fetcher=self.fetcher
            )
            content: bytes = document.write_pdf(
                stylesheets=self.stylesheets,
                font_config=self.font_config,
                pdf_identifier=identifier,
                pdf_variant=PDF_VARIANT,
                cache=self.image_cache,
            )
        return content


_renderer: DocumentRenderer | None = None
_renderer_lock = threading.Lock()


def renderer() -> DocumentRenderer:
    """The process's warm renderer, made on first use (never at import time)."""
    global _renderer
    if _renderer is None:
        with _renderer_lock:
            if _renderer is None:
                _renderer = DocumentRenderer()
    return _renderer


def document_identifier(invoice: Invoice) -> bytes:
    """The PDF's /ID: the same for every rendering of one invoice, never random."""
    key = f"{invoice.id}|{invoice.number}|{TEMPLATE_VERSION}".encode()
    return hashlib.sha256(key).hexdigest()[:32].encode("ascii")


def rendered(content: bytes, template_version: str) -> RenderedPdf:
    return RenderedPdf(
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        template_version=template_version,
        renderer_version=RENDERER_VERSION,
    )


def render_invoice_pdf(
    invoice: Invoice,
    seller: Seller,
    locale: str = "en_US",
    discounts: Sequence[InvoiceDiscount] = (),
) -> RenderedPdf:
    """`discounts`: the invoice's discount lines (its `invoice_discounts` rows)."""
    logo = logo_data_uri(seller.logo_path) if seller.logo_path else None
    view = invoice_view(invoice, seller, locale, logo_uri=logo, discounts=discounts)
    pdf = renderer().pdf(view, document_identifier(invoice))
    content = factur_x(
        pdf,
        lambda: einvoice.of_invoice(view, seller),
        moment=invoice.finalized_at or invoice.created_at,
        title=f"Invoice {view.number}",
        author=view.seller.name,
        lang=view.lang,
    )
    return rendered(content, TEMPLATE_VERSION)
