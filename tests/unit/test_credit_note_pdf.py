"""The credit note PDF, rendered without a database: what its reader finds on it, and
that it fetches nothing, as the invoice's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from billing.documents.credit_note_pdf import TEMPLATE_VERSION, render_credit_note_pdf
from tests.support.invoices import make_credit_note, make_customer, make_invoice, make_line
from tests.unit.test_invoice_pdf import SELLER, Listener, contains, hostile_texts, text_of


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.stop()


def test_a_credit_note_names_the_invoice_it_corrects_and_shows_the_invoice_s_parties():
    invoice = make_invoice(line_count=2)
    content = render_credit_note_pdf(make_credit_note(invoice), invoice, SELLER).content
    text = text_of(content)
    assert "Credit note for invoice INV-2026-000042 of Mar 5, 2026" in text.splitlines()
    assert contains(
        content,
        "Credit note number CN-2026-000007",
        "Issue date Mar 12, 2026",
        SELLER.name,
        "Tax ID: GB123456789",
        "Northwind Traders GmbH",
        "Tax ID: DE123456789",
        "Reason Order change",
    )


def test_a_credit_note_lists_its_lines_tax_per_rate_totals_and_how_it_was_settled():
    invoice = make_invoice(line_count=2)  # the first line at 7 %, the second at 19 %
    note = make_credit_note(
        invoice,
        amount_due_reduction=0,
        refund_amount=10_000,
        credit_balance_amount=3_279,
        out_of_band_amount=1_000,
    )
    assert note.total == 14_279  # €123.45 + €8.64 tax, and €10.00 + €0.70
    content = render_credit_note_pdf(note, invoice, SELLER).content
    assert contains(
        content,
        "Consulting, work package 1 1 €123.45 7% €8.64",
        "Goodwill credit €10.00 7% €0.70",
        "7% €133.45 €9.34",
        "Subtotal €133.45",
        "Tax €9.34",
        "Total €142.79",
        "Refunded to the original payment method €100.00",
        "Credited to your account balance €32.79",
        "Settled separately €10.00",
    )
    assert "Deducted" not in text_of(content)


def test_a_void_credit_note_is_stamped_void_and_says_it_credits_nothing():
    invoice = make_invoice(line_count=1)
    note = make_credit_note(
        invoice, status="void", voided_at=datetime(2026, 3, 14, 8, 0, tzinfo=UTC)
    )
    text = text_of(render_credit_note_pdf(note, invoice, SELLER).content)
    assert "VOID" in text
    assert "This credit note was voided on Mar 14, 2026. It credits nothing." in text
    assert "How this credit note was settled" not in text


def test_the_same_credit_note_renders_to_the_same_bytes():
    invoice = make_invoice(line_count=1)
    first = render_credit_note_pdf(make_credit_note(invoice), invoice, SELLER)
    again = render_credit_note_pdf(make_credit_note(invoice), invoice, SELLER)
    assert first.content == again.content and first.sha256 == again.sha256
    assert first.template_version == TEMPLATE_VERSION


def test_urls_in_a_credit_note_s_memo_lines_and_parties_are_printed_and_never_fetched(listener):
    name, description = hostile_texts(listener.port)
    invoice = make_invoice(
        [make_line(0, description=description)], customer=make_customer(name=name)
    )
    note = make_credit_note(invoice, memo=f"{description}\n{name}")
    content = render_credit_note_pdf(note, invoice, SELLER).content
    time.sleep(0.2)
    assert listener.connections == 0
    assert contains(content, name, description)
    assert b"root:" not in content
