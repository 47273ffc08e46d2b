"""Finalize-to-e-invoice: the Factur-X PDF (PDF, CII XML, embedding) against the plain PDF
alone, in the same run.

    .venv/bin/python bench/einvoice.py [--runs 15]

(a) baseline: the warm renderer's PDF of a one-page invoice alone (its view, the template,
    WeasyPrint's PDF/A-3b), as the pdf worker rendered it before e-invoices;
(b) the e-invoice alone: the CII XML and the UBL XML of the same view;
(c) `render_invoice_pdf` with a seller configured for e-invoices: the PDF, its CII XML and
    the Factur-X embedding, as the pdf worker renders it now;
(d) the same for a 100-line invoice.
Medians over --runs, after a warm-up. Last line: the ratio Factur-X / plain PDF.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from billing.documents.invoice_pdf import (  # noqa: E402
    Seller,
    document_identifier,
    render_invoice_pdf,
    renderer,
)
from billing.documents.view import invoice_view  # noqa: E402
from billing.einvoices import cii, model, ubl  # noqa: E402
from tests.support.invoices import make_invoice  # noqa: E402

SELLER = Seller(
    name="Example Billing GmbH",
    address_lines=("Friedrichstraße 1", "10117 Berlin", "Germany"),
    tax_id="DE987654321",
    email="billing@example.com",
    street="Friedrichstraße 1",
    city="Berlin",
    postal_code="10117",
    country="DE",
    phone="+49 30 1234567",
    iban="DE89370400440532013000",
    bic="COBADEFFXXX",
)


def median_ms(action: Callable[[], object], runs: int) -> float:
    action()  # warm-up
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    one_page = make_invoice(line_count=8, buyer_reference="PO-4711")
    hundred = make_invoice(line_count=100, buyer_reference="PO-4711")

    def plain_pdf(invoice: object) -> bytes:
        view = invoice_view(invoice, SELLER, "en_US")  # type: ignore[arg-type]
        return renderer().pdf(view, document_identifier(invoice))  # type: ignore[arg-type]

    def xml(write: Callable[[model.EInvoice], bytes]) -> bytes:
        view = invoice_view(one_page, SELLER, "en_US")
        return write(model.require_complete(model.of_invoice(view, SELLER)))

    plain = median_ms(lambda: plain_pdf(one_page), args.runs)
    cii_ms = median_ms(lambda: xml(cii.to_cii), args.runs)
    ubl_ms = median_ms(lambda: xml(ubl.to_ubl), args.runs)
    factur_x = median_ms(lambda: render_invoice_pdf(one_page, SELLER), args.runs)
    plain_100 = median_ms(lambda: plain_pdf(hundred), max(3, args.runs // 3))
    factur_x_100 = median_ms(lambda: render_invoice_pdf(hundred, SELLER), max(3, args.runs // 3))
    plain_size = len(plain_pdf(one_page))
    factur_x_size = len(render_invoice_pdf(one_page, SELLER).content)

    print(f"plain PDF (PDF/A-3b), 8 lines:        {plain:7.1f} ms  ({plain_size} B)")
    print(f"CII XML alone, 8 lines:               {cii_ms:7.1f} ms")
    print(f"UBL XML alone, 8 lines:               {ubl_ms:7.1f} ms")
    print(f"Factur-X PDF (PDF + CII + embedding): {factur_x:7.1f} ms  ({factur_x_size} B)")
    print(f"plain PDF, 100 lines:                 {plain_100:7.1f} ms")
    print(f"Factur-X PDF, 100 lines:              {factur_x_100:7.1f} ms")
    print(f"ratio Factur-X / plain PDF, 100 lines: {factur_x_100 / plain_100:.2f}")
    print(f"ratio Factur-X / plain PDF: {factur_x / plain:.2f}")


if __name__ == "__main__":
    main()
