"""The invoice PDF: what a finance team reads in it, and what the renderer never fetches."""

from __future__ import annotations

import hashlib
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pypdf
import pytest
import weasyprint

from billing.documents import TEMPLATE_VERSION, Seller, render_invoice_pdf
from billing.documents.credit_note_pdf import TEMPLATE_VERSION as CREDIT_NOTE_TEMPLATE_VERSION
from billing.documents.fetcher import TEMPLATES_DIR, FetchRefused, TemplateOnlyFetcher
from billing.documents.invoice_pdf import RENDERER_VERSION
from tests.support.invoices import make_customer, make_invoice, make_line

SELLER = Seller(
    name="Example Billing Ltd",
    address_lines=("1 Main Street", "London EC1A 1AA"),
    tax_id="GB123456789",
    email="billing@example.com",
    payment_instructions="IBAN GB33 BUKB 2020 1555 5555 55\nBIC BUKBGB22",
)
# What the template, its CSS and fonts hashed to when TEMPLATE_VERSION was last bumped.
TEMPLATE_FINGERPRINTS = {
    "invoice-1": "0fd6650932f0054622a8d8eb681e48715b36b9d347b8a07b8741119a686e906a",
    # Seller, meta and summary columns as CSS tables: the floats overlapped the lines.
    "invoice-2": "74012d7371091118f26ce434951e71496fde3e5ecc0924e22541ea6eb00e5f02",
    # Discount lines, the balance applied and credited, amount due net of both.
    "invoice-3": "614749b1db3dc6e02da48d809a0125d0723e4a039f15d879b50715b1ce94c27b",
    # The legal notice of the lines' tax treatment (reverse charge...) under the totals.
    "invoice-4": "42bb0f47e48d25c82230a6ae4cddc3ce550cd53656f9010375c671a8d893deee",
    # The same folder: the PDF became PDF/A-3b with its e-invoice embedded (Factur-X).
    "invoice-5": "42bb0f47e48d25c82230a6ae4cddc3ce550cd53656f9010375c671a8d893deee",
}
CREDIT_NOTE_TEMPLATE_FINGERPRINTS = {
    "credit-note-1": "38f713f7336d7dedbc982d932a832a259b20f9e783fcc1f1a94fb410e777b241",
    # The same folder: the PDF became PDF/A-3b with its e-invoice embedded (Factur-X).
    "credit-note-2": "38f713f7336d7dedbc982d932a832a259b20f9e783fcc1f1a94fb410e777b241",
}


def pages(content: bytes) -> list[str]:
    # pypdf 7.1 reads one of our fonts' (valid) ToUnicode maps as one byte per code once it
    # maps a glyph to U+FFE5 (ja_JP's ￥), and puts a NUL before each character: drop them.
    return [
        page.extract_text().replace("\x00", "")
        for page in pypdf.PdfReader(io.BytesIO(content)).pages
    ]


def squeezed(text: str) -> str:
    """Text without whitespace: PDF extraction breaks long strings at wrapped lines."""
    return "".join(text.split())


def text_of(content: bytes) -> str:
    return "\n".join(pages(content))


def contains(content: bytes, *expected: str) -> bool:
    haystack = squeezed(text_of(content))
    return all(squeezed(item) in haystack for item in expected)


def test_the_pdf_shows_the_invoice_number_customer_every_line_and_the_total():
    lines = [make_line(i, description=f"Support plan, seat {i + 1}") for i in range(5)]
    rendered = render_invoice_pdf(make_invoice(lines), SELLER)
    text = text_of(rendered.content)
    assert "INV-2026-000042" in text
    assert "Northwind Traders GmbH" in text
    for line in lines:
        assert line.description in text
    assert "Total €1,469.05" in text  # 5 lines of €246.90, each taxed €46.91
    assert rendered.content.startswith(b"%PDF-")
    assert rendered.sha256 == hashlib.sha256(rendered.content).hexdigest()
    assert rendered.template_version == TEMPLATE_VERSION
    assert rendered.renderer_version == RENDERER_VERSION == f"weasyprint {weasyprint.__version__}"


def test_the_pdf_shows_both_parties_dates_and_a_tax_summary_per_rate():
    invoice = make_invoice(
        [make_line(0, tax_rate="19"), make_line(1, tax_rate="7"), make_line(2, tax_rate="19")]
    )
    text = text_of(render_invoice_pdf(invoice, SELLER).content)
    for expected in (
        "Example Billing Ltd",
        "London EC1A 1AA",
        "Tax ID: GB123456789",
        "billing@example.com",
        "Hauptstraße 5",
        "10115 Berlin",
        "Germany",
        "Tax ID: DE123456789",
        "accounts@northwind.example",
        "Issue date Mar 5, 2026",
        "Due date Apr 4, 2026",
        "7% €246.90 €17.28",
        "19% €493.80 €93.82",
        "Subtotal €740.70",
        "Tax €111.10",
        "Amount due €851.80",
    ):
        assert expected in text, expected


ISSUED_BY = {
    "name": "Former Billing GmbH",
    "address_lines": ["Altweg 1", "Vienna 1010"],
    "tax_id": "ATU12345678",
    "email": "old-billing@example.com",
}
ISSUED_TO = {
    "name": "Southwind Traders AG",
    "email": "old-accounts@southwind.example",
    "address": {"line1": "Ringstrasse 7", "postal_code": "8001", "city": "Zurich", "country": "CH"},
    "tax_id": "CHE-123.456.789",
}


def test_an_issued_invoice_shows_the_parties_it_was_issued_with_and_a_draft_the_current_ones():
    issued = make_invoice(seller_party=ISSUED_BY, buyer_party=ISSUED_TO)
    content = render_invoice_pdf(issued, SELLER).content
    assert contains(
        content,
        "Former Billing GmbH",
        "Altweg 1",
        "Tax ID: ATU12345678",
        "old-billing@example.com",
        "Southwind Traders AG",
        "Ringstrasse 7",
        "8001 Zurich",
        "Switzerland",
        "Tax ID: CHE-123.456.789",
        "old-accounts@southwind.example",
    )
    text = squeezed(text_of(content))
    for current in (
        "Example Billing Ltd",
        "GB123456789",
        "Northwind",
        "Hauptstraße",
        "DE123456789",
    ):
        assert squeezed(current) not in text, current

    draft = make_invoice(status="draft", number=None, finalized_at=None)
    assert contains(
        render_invoice_pdf(draft, SELLER).content,
        "Example Billing Ltd",
        "GB123456789",
        "Northwind Traders GmbH",
        "DE123456789",
    )


def test_a_reverse_charged_invoice_prints_the_directive_s_wording_and_the_buyer_s_vat_id():
    line = make_line(0, tax_rate="0")
    line.tax_reason = "reverse_charge"
    content = render_invoice_pdf(make_invoice([line, make_line(1, tax_rate="0")]), SELLER).content
    assert contains(
        content,
        "Reverse charge: VAT to be accounted for by the recipient, "
        "Article 196 Council Directive 2006/112/EC",
        "Tax ID: DE123456789",
    )


def test_an_invoice_taxed_as_usual_prints_no_tax_notice():
    line = make_line(0)
    line.tax_reason = "standard"
    content = render_invoice_pdf(make_invoice([line]), SELLER).content
    assert not contains(content, "Reverse charge")
    assert not contains(content, "Exempt")


def test_a_200_line_invoice_runs_over_several_pages_each_with_its_page_number_and_header_row():
    invoice = make_invoice(line_count=200)
    texts = pages(render_invoice_pdf(invoice, SELLER).content)
    assert len(texts) >= 3
    for number, text in enumerate(texts, start=1):
        assert f"Page {number} of {len(texts)}" in text
        assert "Description Qty Unit price Tax rate Amount" in text
        assert "INV-2026-000042" in text
    assert "Consulting, work package 200" in texts[-1]


def _one_line_invoice(currency: str, unit_amount: int, **fields):
    line = make_line(0, quantity=1, unit_amount=unit_amount, tax_rate="0")
    return make_invoice(
        [line], currency=currency, customer=make_customer(currency=currency), **fields
    )


@pytest.mark.parametrize(
    ("locale", "currency", "minor_units", "money", "issued"),
    [
        ("de_DE", "eur", 123_456, "1.234,56 €", "05.03.2026"),
        ("en_US", "usd", 123_456, "$1,234.56", "Mar 5, 2026"),
        ("ja_JP", "jpy", 1_234, "￥1,234", "2026/03/05"),
        ("en_US", "kwd", 1_234_567, "KWD1,234.567", "Mar 5, 2026"),
    ],
)
def test_money_and_dates_follow_the_locale_and_the_currencys_own_exponent(
    locale, currency, minor_units, money, issued
):
    rendered = render_invoice_pdf(_one_line_invoice(currency, minor_units), SELLER, locale)
    assert contains(rendered.content, f"Total {money}", f"Issue date {issued}")


def test_a_paid_invoice_says_when_it_was_paid_and_that_nothing_is_due():
    invoice = make_invoice(status="paid", paid_at=datetime(2026, 3, 7, 8, 0, tzinfo=UTC))
    invoice.amount_paid = invoice.total
    text = text_of(render_invoice_pdf(invoice, SELLER).content)
    assert "Paid on Mar 7, 2026" in text
    assert "Amount due €0.00" in text
    assert "Please pay" not in text


def test_a_refund_is_listed_only_when_there_is_one():
    invoice = make_invoice(status="paid", paid_at=datetime(2026, 3, 7, tzinfo=UTC))
    invoice.amount_paid = invoice.total
    assert "Amount refunded" not in text_of(render_invoice_pdf(invoice, SELLER).content)
    invoice.amount_refunded = 5_000
    assert "Amount refunded €50.00" in text_of(render_invoice_pdf(invoice, SELLER).content)


def test_what_the_balance_and_credit_notes_settled_is_listed_and_no_longer_due():
    invoice = make_invoice()
    assert "Applied from your credit balance" not in text_of(
        render_invoice_pdf(invoice, SELLER).content
    )
    invoice.balance_applied, invoice.amount_credited = 10_000, 2_500
    due = invoice.total - 12_500
    content = render_invoice_pdf(invoice, SELLER).content
    assert contains(
        content,
        "Applied from your credit balance €100.00",
        "Credited €25.00",
        f"Amount due €{due / 100:,.2f}",
        f"Please pay €{due / 100:,.2f} by Apr 4, 2026",
    )


def test_each_coupon_is_a_deduction_under_the_subtotal_and_the_tax_is_on_the_discounted_lines():
    from billing.models import InvoiceDiscount

    lines = [make_line(0, quantity=1, unit_amount=10_000, tax_rate="19")]
    lines[0].discount_amount, lines[0].tax = 2_500, 1_425  # 19 % of €75.00
    invoice = make_invoice(lines, discount=2_500, tax=1_425, total=10_000 - 2_500 + 1_425)
    discounts = [InvoiceDiscount(description="Launch offer (25% off)", amount=2_500)]
    text = squeezed(text_of(render_invoice_pdf(invoice, SELLER, discounts=discounts).content))
    for row in (
        "Subtotal €100.00",
        "Launch offer (25% off) -€25.00",
        "Tax €14.25",
        "Total €89.25",
        "19% €75.00 €14.25",
    ):
        assert squeezed(row) in text, row
    # One coupon is its own sum: no "Discount" row repeats it.
    assert "Discount-€25.00" not in text


def test_a_void_invoice_is_marked_void_and_asks_for_nothing():
    invoice = make_invoice(status="void", voided_at=datetime(2026, 3, 9, tzinfo=UTC))
    text = text_of(render_invoice_pdf(invoice, SELLER).content)
    assert "VOID" in text
    assert "This invoice was voided on Mar 9, 2026. Nothing is owed." in text
    assert "Please pay" not in text


def test_an_open_send_invoice_asks_for_payment_by_the_due_date_with_the_sellers_instructions():
    text = text_of(render_invoice_pdf(make_invoice(), SELLER).content)
    assert "Please pay €1,703.60 by Apr 4, 2026" in text
    assert "IBAN GB33 BUKB 2020 1555 5555 55" in text
    assert "BIC BUKBGB22" in text


def test_an_open_charge_automatically_invoice_will_be_charged_to_the_card_on_file():
    invoice = make_invoice(collection_method="charge_automatically", due_date=None)
    text = text_of(render_invoice_pdf(invoice, SELLER).content)
    assert "will be charged automatically to the card on file" in text
    assert "IBAN" not in text


def test_the_same_invoice_renders_to_the_same_bytes_dated_by_the_invoice_not_the_clock():
    first = render_invoice_pdf(make_invoice(), SELLER)
    time.sleep(1.1)  # PDF dates have one-second resolution
    second = render_invoice_pdf(make_invoice(), SELLER)
    assert first.content == second.content
    assert first.sha256 == second.sha256
    metadata = pypdf.PdfReader(io.BytesIO(first.content)).metadata
    assert metadata["/CreationDate"] == "D:20260305103000Z"  # finalized_at
    assert metadata["/Title"] == "Invoice INV-2026-000042"


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x20\x40\x60"))
        + chunk(b"IEND", b"")
    )


def test_the_sellers_logo_is_embedded_in_the_pdf(tmp_path):
    logo = tmp_path / "logo.png"
    logo.write_bytes(_png_1x1())
    seller = Seller(name="Logo Co", logo_path=str(logo))
    content = render_invoice_pdf(make_invoice(), seller).content
    page = pypdf.PdfReader(io.BytesIO(content)).pages[0]
    assert len(page.images) == 1


class Listener:
    """A real TCP server on 127.0.0.1: records every connection made to it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()  # answer nothing: a fetch fails at once

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.server.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


def hostile_texts(port: int) -> tuple[str, str]:
    name = (
        f'<img src="http://127.0.0.1:{port}/name.png"> '
        f'<link rel="stylesheet" href="http://127.0.0.1:{port}/name.css"> '
        '<img src="file:///etc/passwd">'
    )
    description = (
        f"<style>@import url(http://127.0.0.1:{port}/line.css);</style> "
        f'<div style="background: url(http://127.0.0.1:{port}/bg.png)">x</div> '
        '<link rel="stylesheet" href="file:///etc/passwd"> '
        "<p style=\"background: url('file:///etc/passwd')\">y</p>"
    )
    return name, description


def test_the_listener_sees_a_plain_weasyprint_fetch(listener):
    # The control: without our fetcher and escaping, WeasyPrint does connect.
    weasyprint.HTML(string=f'<img src="http://127.0.0.1:{listener.port}/x.png">').write_pdf()
    assert listener.connections == 1


def test_urls_in_customer_text_are_printed_literally_and_never_fetched(listener):
    name, description = hostile_texts(listener.port)
    invoice = make_invoice(
        [make_line(0, description=description)], customer=make_customer(name=name)
    )
    content = render_invoice_pdf(invoice, SELLER).content
    time.sleep(0.2)
    assert listener.connections == 0
    assert contains(content, name, description)
    assert b"root:" not in content


def test_the_fetcher_alone_stops_unescaped_markup_from_fetching(listener):
    name, description = hostile_texts(listener.port)
    html = f"<html><body><p>{name}</p>{description}</body></html>"
    weasyprint.HTML(string=html, url_fetcher=TemplateOnlyFetcher()).write_pdf()
    time.sleep(0.2)
    assert listener.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://127.0.0.1:9/x.png",
        "https://example.com/logo.png",
        "ftp://example.com/x",
        f"{TEMPLATES_DIR.as_uri()}/../invoice_pdf.py",
        f"{TEMPLATES_DIR.as_uri()}/fonts/../../view.py",
        f"file://evil.example{TEMPLATES_DIR}/invoice.css",
        f"{TEMPLATES_DIR.as_uri()}/missing.css",
    ],
)
def test_the_fetcher_refuses_anything_outside_the_templates(url):
    with pytest.raises(FetchRefused):
        TemplateOnlyFetcher().fetch(url)


def test_the_fetcher_refuses_a_symlink_out_of_its_folder(tmp_path):
    root = tmp_path / "templates"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (root / "link.css").symlink_to(secret)
    with pytest.raises(FetchRefused):
        TemplateOnlyFetcher(root).fetch((root / "link.css").as_uri())


def test_the_fetcher_serves_template_files_and_data_uris():
    fetcher = TemplateOnlyFetcher()
    css = fetcher.fetch(f"{TEMPLATES_DIR.as_uri()}/invoice.css")
    assert b"@page" in css.read()
    data = fetcher.fetch("data:text/plain;base64,aGVsbG8=")
    assert data.read() == b"hello"


def _templates_fingerprint(other_documents_template: str) -> str:
    """The template folder as one document kind sees it: all but the other kind's HTML."""
    digest = hashlib.sha256()
    for path in sorted(p for p in TEMPLATES_DIR.rglob("*") if p.is_file()):
        if path.name == other_documents_template:
            continue
        digest.update(str(path.relative_to(TEMPLATES_DIR)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_changing_the_template_means_bumping_its_version():
    assert TEMPLATE_FINGERPRINTS.get(TEMPLATE_VERSION) == _templates_fingerprint(
        "credit_note.html"
    ), (
        "billing/documents/templates changed: bump TEMPLATE_VERSION and record the new "
        "fingerprint here"
    )


def test_changing_the_credit_note_template_means_bumping_its_version():
    assert CREDIT_NOTE_TEMPLATE_FINGERPRINTS.get(
        CREDIT_NOTE_TEMPLATE_VERSION
    ) == _templates_fingerprint("invoice.html"), (
        "the credit note's template, the stylesheets or the fonts changed: bump "
        "billing/documents/credit_note_pdf.py's TEMPLATE_VERSION and record the new "
        "fingerprint here"
    )


def test_dates_without_a_time_zone_are_taken_as_utc():
    invoice = make_invoice(finalized_at=datetime(2026, 3, 5, 23, 30), due_date=date(2026, 4, 4))
    assert "Issue date Mar 5, 2026" in text_of(render_invoice_pdf(invoice, SELLER).content)


def test_fonts_ship_with_their_licence():
    fonts = Path(TEMPLATES_DIR, "fonts")
    assert "Bitstream" in (fonts / "LICENSE-DejaVu.txt").read_text()
    assert sorted(p.name for p in fonts.glob("*.ttf")) == [
        "DejaVuSansInvoice-Bold.ttf",
        "DejaVuSansInvoice-Regular.ttf",
    ]


def _baselines(content: bytes) -> dict[str, float]:
    """Where each text run starts on the first page, from the top, in points."""
    page = pypdf.PdfReader(io.BytesIO(content)).pages[0]
    height = float(page.mediabox.height)
    found: dict[str, float] = {}

    def visit(text: str, cm: list[float], tm: list[float], *_: object) -> None:
        text = text.replace("\x00", "").strip()
        if text and text not in found:
            found[text] = height - (tm[5] * cm[3] + cm[5])

    page.extract_text(visitor_text=visit)
    return found


def test_the_blocks_follow_each_other_down_the_page_without_overlapping():
    invoice = make_invoice(line_count=3)
    at = _baselines(render_invoice_pdf(invoice, SELLER).content)

    def top(prefix: str) -> float:
        return next(y for text, y in at.items() if text.lower().startswith(prefix.lower()))

    # The seller and meta columns, then the buyer, the lines, the summary, the payment box.
    assert (
        top(SELLER.name) < top("Bill to") < top("Description") < top(invoice.lines[0].description)
    )
    assert top(invoice.customer.email) < top("Description")
    assert top(invoice.lines[-1].description) < top("Tax summary") < top("Please pay")
    assert top("Subtotal") < top("Amount due") < top("Please pay")
