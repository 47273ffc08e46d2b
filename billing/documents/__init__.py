"""Documents made from billing data: invoice PDFs (pure, no database or Flask app)."""

from billing.documents.invoice_pdf import (
    TEMPLATE_VERSION,
    RenderedPdf,
    Seller,
    render_invoice_pdf,
)

__all__ = ["TEMPLATE_VERSION", "RenderedPdf", "Seller", "render_invoice_pdf"]
