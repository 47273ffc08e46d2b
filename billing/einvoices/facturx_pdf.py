"""Factur-X: the PDF/A-3 of an invoice or a credit note with its CII XML embedded
(`factur-x.xml`, the EN 16931 profile), so that one file is both the readable and the
machine-readable invoice.

Pure. The factur-x library stamps the PDF's and the XMP's dates with the time of the call;
a document must give the same bytes every time it is rendered (the pipeline stores one
version per distinct content), so they are pinned to the document's own moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import facturx
from facturx import facturx as facturx_internals

from billing.einvoices import cii, model
from billing.einvoices.amounts import AmountNotRepresentable
from billing.einvoices.categories import InconsistentTaxReason

FACTURX_LEVEL = "en16931"
# What keeps a document from carrying its XML: it is then a plain PDF/A-3.
NOT_AN_EINVOICE = (
    model.EInvoiceFieldMissing,
    model.NotIssued,
    InconsistentTaxReason,
    AmountNotRepresentable,
)

_clock_lock = threading.Lock()


@contextmanager
def _stamped(moment: datetime) -> Iterator[None]:
    """The library's clock (two module functions, factur-x 7.8) pinned to `moment`."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    pdf_date = utc.strftime("D:%Y%m%d%H%M%S+00'00'")
    xmp_date = utc.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    with _clock_lock:
        saved = (facturx_internals._get_pdf_timestamp, facturx_internals._get_metadata_timestamp)
        facturx_internals._get_pdf_timestamp = lambda date=None: pdf_date
        facturx_internals._get_metadata_timestamp = lambda: xmp_date
        try:
            yield
        finally:
            (
                facturx_internals._get_pdf_timestamp,
                facturx_internals._get_metadata_timestamp,
            ) = saved


def embed_cii(
    pdf: bytes, xml: bytes, *, moment: datetime, title: str, author: str, lang: str
) -> bytes:
    """`pdf` (a PDF/A-3) with `xml` attached as Factur-X EN 16931."""
    with _stamped(moment):
        content: bytes = facturx.generate_from_binary(
            pdf,
            xml,
            flavor="factur-x",
            level=FACTURX_LEVEL,
            # The tests validate every XML against the XSD and the Schematron; re-reading
            # the XSD on each render would only slow the pdf worker down.
            check_xsd=False,
            pdf_metadata={"author": author, "title": title, "subject": title, "keywords": ""},
            lang=lang,
        )
    return content


def factur_x(
    pdf: bytes,
    build: Callable[[], model.EInvoice],
    *,
    moment: datetime,
    title: str,
    author: str,
    lang: str,
) -> bytes:
    """The Factur-X file of a document whose e-invoice is complete; otherwise `pdf` as it
    is (a draft, or a seller not configured for e-invoices): an e-invoice that breaks the
    rules is worse than none."""
    try:
        einvoice = model.require_complete(build())
        xml = cii.to_cii(einvoice)
    except NOT_AN_EINVOICE:
        return pdf
    return embed_cii(pdf, xml, moment=moment, title=title, author=author, lang=lang)
