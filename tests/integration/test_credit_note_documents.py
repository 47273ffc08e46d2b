"""Credit note PDFs and their email, end to end in one process: the render job recorded
with the credit note, the pdf job through its real Celery task, the stored and versioned
document, and the credit_note_issued email as the real SMTP server received it. Each
PDF is also drawn to PNGs and read back as text, as a person would look at it.

The credit note rows are written directly with the models, as the credit note use case
leaves them (issued, numbered, settled); its own rules are tested where it lives."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from billing.documents.credit_note_pdf import TEMPLATE_VERSION as CREDIT_NOTE_TEMPLATE_VERSION
from billing.extensions import db
from billing.models import (
    CreditNote,
    CreditNoteDocument,
    CreditNoteLine,
    EmailDelivery,
    Invoice,
    OutboxJob,
    StoredBlob,
)
from billing.platform.unit_of_work import transaction
from tests.support.papers import inked_share, page_images, pdf_text, red_pixels, squeezed


def _day(moment: date) -> str:
    """A date as the documents write it in en_US: Mar 5, 2026."""
    return f"{moment:%b} {moment.day}, {moment.year}"


def _finalized_at(invoice_id: str) -> datetime:
    finalized_at = db.session.get(Invoice, invoice_id).finalized_at
    assert finalized_at is not None
    return finalized_at


def _send_invoice(admin, customer: dict[str, Any]) -> dict[str, Any]:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [
                {"description": "Platform seats", "quantity": 12, "unit_amount": 2500},
                {"description": "Onboarding", "quantity": 1, "unit_amount": 9900, "tax_rate": 7},
            ],
        },
    ).get_json()
    finalized = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    return finalized.get_json()  # type: ignore[no-any-return]


def _issue_credit_note(invoice_id: str, number: str = "CN-2026-000001") -> str:
    """Two seats back at 0 % and part of the onboarding at 7 %, the day after the invoice:
    €50.00 off what the invoice still asks, €10.70 into the customer's balance. Its render
    is recorded with it, as the credit note use case does."""
    from billing.documents import documents

    with transaction() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        lines = {line.description: line for line in invoice.lines}
        seats, onboarding = lines["Platform seats"], lines["Onboarding"]
        note = CreditNote(
            number=number,
            invoice_id=invoice.id,
            customer_id=invoice.customer_id,
            currency=invoice.currency,
            status="issued",
            reason="order_change",
            memo="Two seats were cancelled.\nThe onboarding was shortened.",
            subtotal=6000,
            tax=70,
            total=6070,
            amount_due_reduction=5000,
            credit_balance_amount=1070,
            issued_at=invoice.finalized_at + timedelta(days=1),
            lines=[
                CreditNoteLine(
                    invoice_line_id=seats.id,
                    description=seats.description,
                    quantity=2,
                    tax_rate=Decimal(0),
                    amount=5000,
                    tax=0,
                ),
                CreditNoteLine(
                    invoice_line_id=onboarding.id,
                    description=onboarding.description,
                    quantity=None,
                    tax_rate=Decimal(7),
                    amount=1000,
                    tax=70,
                ),
            ],
        )
        session.add(note)
        invoice.amount_credited = 5000
        invoice.credit_notes_total = 6070
        session.flush()
        documents.request_credit_note_renders(session, [note.id])
        return note.id


def _void(credit_note_id: str) -> None:
    from billing.documents import documents

    with transaction() as session:
        note = session.get(CreditNote, credit_note_id)
        assert note is not None
        note.status, note.voided_at = "void", note.issued_at + timedelta(days=2)
        documents.request_credit_note_renders(session, [credit_note_id])


def _versions(credit_note_id: str) -> list[CreditNoteDocument]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(CreditNoteDocument)
            .where(CreditNoteDocument.credit_note_id == credit_note_id)
            .order_by(CreditNoteDocument.version)
        )
    )


def _content(document: CreditNoteDocument) -> bytes:
    return bytes(db.session.get(StoredBlob, document.storage_key).content)


@pytest.fixture
def credited(admin, make_customer, run_jobs) -> tuple[dict[str, Any], str]:
    """An issued invoice with its PDF and email out, then a credit note on it."""
    customer = make_customer(
        name="Initech Holding AG",
        email="ap@initech.example",
        billing_emails=["finance@initech.example"],
    )
    invoice = _send_invoice(admin, customer)
    run_jobs()
    return invoice, _issue_credit_note(invoice["id"])


def test_issuing_a_credit_note_records_its_render_on_the_pdf_queue(admin, make_customer):
    invoice = _send_invoice(admin, make_customer())
    credit_note_id = _issue_credit_note(invoice["id"])
    [job] = db.session.scalars(
        select(OutboxJob).where(OutboxJob.name == "pdf.render_credit_note")
    ).all()
    assert (job.queue, job.args) == ("pdf", {"credit_note_id": credit_note_id})


def test_the_credit_note_pdf_is_stored_once_with_its_version_hash_template_and_renderer(
    credited, run_jobs
):
    from billing.documents import documents

    _, credit_note_id = credited
    run_jobs()
    [document] = _versions(credit_note_id)
    content = _content(document)
    assert content.startswith(b"%PDF-")
    assert document.sha256 == hashlib.sha256(content).hexdigest()
    assert (document.version, document.credit_note_status, document.storage) == (
        1,
        "issued",
        "postgres",
    )
    assert document.size == len(content)
    assert document.storage_key == f"{credit_note_id}/{document.sha256}.pdf"
    assert document.template_version == CREDIT_NOTE_TEMPLATE_VERSION
    assert document.renderer_version.startswith("weasyprint")
    assert documents.render_credit_note(credit_note_id) == "unchanged"
    assert documents.render_credit_note(credit_note_id, force=True) == "unchanged"
    assert len(_versions(credit_note_id)) == 1


def test_the_credit_note_pdf_reads_as_a_correction_of_its_invoice_with_its_settlement(
    credited, run_jobs, tmp_path
):
    invoice, credit_note_id = credited
    run_jobs()
    [document] = _versions(credit_note_id)
    content = _content(document)

    [page] = page_images(content, tmp_path, "credit-note")
    assert (tmp_path / "credit-note-1.png").stat().st_size > 0
    assert 0.01 < inked_share(page) < 0.5  # a page with text on it, not blank, not a blot
    assert red_pixels(page) == 0  # no VOID stamp on a credit note that stands

    text = pdf_text(content)
    flat = squeezed(text)
    assert "Credit note" in text.splitlines()  # the title, on a line of its own
    assert "Credit note number CN-2026-000001" in text
    invoiced_on = _finalized_at(invoice["id"])
    assert f"Issue date {_day(invoiced_on + timedelta(days=1))}" in text
    reference = f"Credit note for invoice {invoice['number']} of {_day(invoiced_on)}"
    assert reference in text.splitlines()  # a line of its own
    # The parties the invoice was issued with.
    for expected in ("Initech Holding AG", "ap@initech.example", "CREDITED TO"):
        assert expected in text
    assert squeezed("Reason Order change") in flat
    assert squeezed("Two seats were cancelled.") in flat
    assert squeezed("The onboarding was shortened.") in flat
    # Lines: description, quantity, net, rate, tax.
    assert squeezed("Platform seats 2 €50.00 0% €0.00") in flat
    assert squeezed("Onboarding €10.00 7% €0.70") in flat
    # The tax summary per rate, then the totals.
    assert squeezed("0% €50.00 €0.00") in flat
    assert squeezed("7% €10.00 €0.70") in flat
    assert squeezed("Subtotal €60.00") in flat
    assert squeezed("Tax €0.70") in flat
    assert squeezed("Total €60.70") in flat
    # How it was settled, in words.
    assert squeezed("How this credit note was settled") in flat
    assert squeezed("Deducted from the invoice's amount due €50.00") in flat
    assert squeezed("Credited to your account balance €10.70") in flat
    assert "Refunded" not in text and "Settled separately" not in text


def test_a_voided_credit_note_gets_a_new_version_stamped_void_and_keeps_the_first(
    credited, run_jobs, tmp_path
):
    invoice, credit_note_id = credited
    run_jobs()
    _void(credit_note_id)
    run_jobs()
    first, second = _versions(credit_note_id)
    assert (first.credit_note_status, second.credit_note_status) == ("issued", "void")
    assert first.sha256 != second.sha256
    [issued_page] = page_images(_content(first), tmp_path, "issued")
    [void_page] = page_images(_content(second), tmp_path, "void")
    # The stamp across the page and the red edge of the notice.
    assert red_pixels(void_page) > 2000 > red_pixels(issued_page)
    text = pdf_text(_content(second))
    assert "VOID" in text
    voided_on = _day(_finalized_at(invoice["id"]) + timedelta(days=3))
    assert f"This credit note was voided on {voided_on}. It credits nothing." in text
    assert "How this credit note was settled" not in text


def test_the_first_credit_note_pdf_is_emailed_to_every_billing_address_with_it_attached(
    admin, credited, run_jobs, mailbox
):
    invoice, credit_note_id = credited
    mailbox.handler.reset()  # the invoice's own email went out with the invoice
    run_jobs()
    received = [m for m in mailbox.messages if "Credit note" in m.message["Subject"]]
    assert sorted(r for m in received for r in m.rcpt_tos) == [
        "ap@initech.example",
        "finance@initech.example",
    ]
    message = received[0].message
    assert str(message["Subject"]).strip() == (
        f"Credit note CN-2026-000001 for invoice {invoice['number']} from Example SaaS Ltd"
    )
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "credit-note-CN-2026-000001.pdf"
    [document] = _versions(credit_note_id)
    assert attachment.get_content() == _content(document)
    body = message.get_body(("plain",)).get_content()
    assert f"corrects invoice {invoice['number']}" in body
    assert "for €60.70" in body
    assert "Deducted from the invoice's amount due: €50.00" in body
    assert "Credited to your account balance: €10.70" in body
    assert "Reason:      Order change" in body
    html = message.get_body(("html",)).get_content()
    assert "Credited to your account balance: <strong>€10.70</strong>" in html

    deliveries = db.session.scalars(
        select(EmailDelivery).where(EmailDelivery.kind == "credit_note_issued")
    ).all()
    assert {(d.invoice_id, d.occasion, d.status) for d in deliveries} == {
        (invoice["id"], credit_note_id, "sent")
    }
    # The invoice lists it with its other emails.
    kinds = sorted(
        e["kind"] for e in admin.get(f"/v1/invoices/{invoice['id']}").get_json()["emails"]
    )
    assert kinds == ["credit_note_issued"] * 2 + ["invoice_issued"] * 2


def test_a_voided_credit_note_sends_no_second_email(credited, run_jobs, mailbox):
    _, credit_note_id = credited
    run_jobs()
    before = len(mailbox.messages)
    _void(credit_note_id)
    run_jobs()
    assert len(mailbox.messages) == before
    assert len(_versions(credit_note_id)) == 2


def test_the_credit_note_email_waits_for_its_own_pdf_not_the_invoice_s(
    admin, make_customer, run_jobs, mailbox
):
    from billing.notifications import emails
    from billing.platform.errors import TransientJobError

    invoice = _send_invoice(admin, make_customer())
    run_jobs()  # the invoice's PDF exists; the credit note's does not yet
    credit_note_id = _issue_credit_note(invoice["id"])
    with transaction() as session:
        [delivery_id] = emails.queue_email(
            session,
            "credit_note_issued",
            session.get(Invoice, invoice["id"]),
            occasion=credit_note_id,
        )
    with pytest.raises(TransientJobError, match="has no PDF yet"):
        emails.send_email(delivery_id)


def test_the_newest_credit_note_document_is_served_to_its_own_customer_only(
    app, credited, run_jobs, make_customer
):
    from billing.documents import documents
    from billing.platform.errors import NotFound

    invoice, credit_note_id = credited
    pending = documents.credit_note_pdf_of(credit_note_id, customer_scope=invoice["customer"])
    assert (pending.document, pending.render_pending) == (None, True)
    run_jobs()
    _void(credit_note_id)
    run_jobs()
    answer = documents.credit_note_pdf_of(credit_note_id, customer_scope=invoice["customer"])
    assert (answer.document.version, answer.render_pending) == (2, False)
    assert "VOID" in pdf_text(documents.document_content(answer.document))
    other = make_customer(email="other@example.com")
    with pytest.raises(NotFound):
        documents.credit_note_pdf_of(credit_note_id, customer_scope=other["id"])


def test_a_credit_note_issued_through_the_api_is_on_its_own_pdf_and_on_the_invoice_s_next(
    admin, make_customer, run_jobs, mailbox
):
    """With the credit notes use case: what it computed (the tax reversed per rate, the
    amount due reduced) is what the two papers show. Until the use case records the
    renders itself, the test records them right after it (recording twice is harmless)."""
    from billing.documents import documents
    from tests.support.papers import pdf_text

    invoice = _send_invoice(admin, make_customer())
    run_jobs()
    seats = next(
        line for line in invoice["lines"]["data"] if line["description"] == "Platform seats"
    )
    response = admin.post(
        "/v1/credit_notes",
        json={
            "invoice": invoice["id"],
            "lines": [{"invoice_line": seats["id"], "quantity": 3}],
            "reason": "duplicate",
        },
    )
    assert response.status_code == 200, response.get_json()
    note = response.get_json()
    with transaction() as session:
        documents.request_credit_note_renders(session, [note["id"]])
        documents.request_renders(session, [invoice["id"]])
    run_jobs()

    [document] = _versions(note["id"])
    flat = squeezed(pdf_text(_content(document)))
    assert squeezed(f"Credit note number {note['number']}") in flat
    assert squeezed(f"Credit note for invoice {invoice['number']}") in flat
    assert squeezed("Platform seats 3 €75.00 0% €0.00") in flat
    assert squeezed("Reason Duplicate charge") in flat
    assert squeezed("Deducted from the invoice's amount due €75.00") in flat

    newest_invoice_pdf = admin.get(f"/v1/invoices/{invoice['id']}/pdf").data
    due = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["amount_due"]
    assert due == invoice["amount_due"] - 7500
    invoice_text = squeezed(pdf_text(newest_invoice_pdf))
    assert squeezed("Credited €75.00") in invoice_text
    assert squeezed(f"Amount due €{due / 100:,.2f}") in invoice_text
    assert [m for m in mailbox.messages if note["number"] in m.message["Subject"]]


def test_an_operator_resends_a_credit_note_s_email_with_its_pdf_until_it_is_voided(
    credited, run_jobs, mailbox
):
    from billing.operations.operations import EmailNotResendable, resend_invoice_email

    invoice, credit_note_id = credited
    run_jobs()
    mailbox.handler.reset()
    resent = resend_invoice_email(invoice["id"], "credit_note_issued")
    run_jobs()
    assert sorted(resent.recipients) == ["ap@initech.example", "finance@initech.example"]
    [again, _] = [m for m in mailbox.messages if "CN-2026-000001" in m.message["Subject"]]
    [attachment] = list(again.message.iter_attachments())
    assert attachment.get_filename() == "credit-note-CN-2026-000001.pdf"
    _void(credit_note_id)
    with pytest.raises(EmailNotResendable, match="the credit note is void"):
        resend_invoice_email(invoice["id"], "credit_note_issued")
