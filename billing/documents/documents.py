"""Invoice and credit note PDFs: rendered on the pdf queue, stored with their hash,
served by the API.

One pipeline renders, stores and versions every kind of document; a `DocumentSubject`
says what one kind is made from and what its first issued version sets off (the email
that carries it). Rendering is idempotent without the ledger: a document is named by its
subject and the SHA-256 of its bytes, so rendering the same subject again either finds
nothing changed (the same source fingerprint: not even rendered) or produces the same
bytes (not stored twice). What shows on paper changing (paid, refunded, voided) adds a new
version; old versions stay, as the customer received them."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from billing.credit_notes.rules import CreditNoteStatus
from billing.documents.view import Seller
from billing.extensions import db
from billing.models import (
    CreditNote,
    CreditNoteDocument,
    Invoice,
    InvoiceDiscount,
    InvoiceDocument,
)
from billing.notifications import emails
from billing.platform import context, jobs
from billing.platform.errors import Conflict, NotFound, PermanentJobError
from billing.platform.logging import get_logger
from billing.platform.metrics import PDF_RENDER_SECONDS
from billing.platform.outbox import JobWork, has_unfinished_job, record_jobs
from billing.platform.unit_of_work import transaction

if TYPE_CHECKING:
    from billing.adapters.storage import DocumentStorage
    from billing.documents.invoice_pdf import RenderedPdf

log = get_logger(__name__)

PDF = "application/pdf"
# Statuses whose document is sent to the customer as "invoice issued".
ISSUED = ("open", "paid", "uncollectible")
# A render that keeps finding its subject changed under it gives up and runs again later.
MAX_RENDER_ROUNDS = 3

Document = InvoiceDocument | CreditNoteDocument


class InvoiceNotFinalized(Conflict):
    code = "invoice_not_finalized"


def request_render(session: Session, invoice: Invoice) -> None:
    """Record a render of `invoice` in the caller's transaction (after its change)."""
    request_renders(session, [invoice.id])


def request_renders(session: Session, invoice_ids: Sequence[str]) -> None:
    """Record a render of each invoice in the caller's transaction, in one insert."""
    record_jobs(session, INVOICES.job, [{INVOICES.subject_column: i} for i in invoice_ids])


def request_credit_note_renders(session: Session, credit_note_ids: Sequence[str]) -> None:
    """Record a render of each credit note in the caller's transaction, in one insert:
    after issuing one (its first document sends the credit_note_issued email) and after
    voiding one (the new version is stamped VOID)."""
    record_jobs(
        session, CREDIT_NOTES.job, [{CREDIT_NOTES.subject_column: i} for i in credit_note_ids]
    )


@lru_cache(maxsize=4)
def _seller(**fields: Any) -> Seller:
    return Seller(**fields)


def seller() -> Seller:
    s = context.settings()
    return _seller(
        name=s.seller_name,
        address_lines=s.seller_address,
        tax_id=s.seller_tax_id,
        email=s.seller_email,
        logo_path=s.seller_logo_path,
        payment_instructions=s.seller_payment_instructions,
        street=s.seller_street,
        city=s.seller_city,
        postal_code=s.seller_postal_code,
        country=s.seller_country,
        phone=s.seller_phone,
        iban=s.seller_iban,
        bic=s.seller_bic,
    )


def _hashed(source: Any) -> str:
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()


def _seller_source(issued_party: dict[str, Any] | None) -> Any:
    """The seller as a document shows it: an issued invoice's own party, with only what
    still comes from the settings (the logo, the payment instructions)."""
    current = seller()
    if issued_party is None:
        return repr(current)
    # What the embedded e-invoice takes from today's settings: the contact, the bank
    # account, and the address in parts of an invoice issued before it was kept.
    return [
        issued_party,
        current.logo_path,
        current.payment_instructions,
        [current.street, current.city, current.postal_code, current.country],
        [current.phone, current.iban, current.bic],
    ]


def _buyer_source(invoice: Invoice) -> Any:
    customer = invoice.customer
    if invoice.buyer_party is None:
        return [customer.name, customer.email, customer.address, customer.tax_id, customer.locale]
    return [invoice.buyer_party, customer.locale]


S = TypeVar("S")
D = TypeVar("D", InvoiceDocument, CreditNoteDocument)


class DocumentSubject(ABC, Generic[S, D]):
    """One kind of document the pipeline renders, stores and versions: what it is made of
    (S, read in one go), how that is fingerprinted and rendered, and what its document
    rows are called."""

    kind: str
    job: str
    document_model: type[D]
    # The document row's columns naming its subject and the subject's status it shows.
    subject_column: str
    status_column: str

    @abstractmethod
    def load(self, session: Session, subject_id: str, *, lock: bool = False) -> S | None: ...

    @abstractmethod
    def subject_id(self, source: S) -> str: ...

    @abstractmethod
    def status(self, source: S) -> str: ...

    def skipped(self, source: S) -> str | None:
        """Why this subject has no document (yet), or None to render it."""
        return None

    @abstractmethod
    def template_version(self) -> str: ...

    @abstractmethod
    def fingerprint(self, source: S, template_version: str) -> str:
        """Everything the document shows, hashed: equal fingerprints render equal documents."""

    @abstractmethod
    def render(self, source: S) -> RenderedPdf: ...

    @abstractmethod
    def issue(self, session: Session, source: S) -> None:
        """Record what the subject's first issued document sets off (its email), in the
        caller's transaction; a no-op once recorded (the email's unique key)."""

    def _subject(self) -> Any:
        return getattr(self.document_model, self.subject_column)

    def latest(self, session: Session, subject_id: str) -> D | None:
        return session.scalars(
            select(self.document_model)
            .where(self._subject() == subject_id)
            .order_by(self.document_model.version.desc())
            .limit(1)
        ).first()

    def same_bytes(self, session: Session, subject_id: str, sha256: str) -> D | None:
        return session.scalars(
            select(self.document_model).where(
                self._subject() == subject_id, self.document_model.sha256 == sha256
            )
        ).first()

    def next_version(self, session: Session, subject_id: str) -> int:
        newest = session.scalar(
            select(func.max(self.document_model.version)).where(self._subject() == subject_id)
        )
        return int(newest or 0) + 1

    def document(self, source: S, **fields: Any) -> D:
        return self.document_model(
            **{
                self.subject_column: self.subject_id(source),
                self.status_column: self.status(source),
            },
            **fields,
        )


@dataclass(frozen=True)
class InvoicePaper:
    """What an invoice's document is made of: the invoice (customer and lines loaded) and
    its discount lines."""

    invoice: Invoice
    discounts: list[InvoiceDiscount]


class InvoiceSubject(DocumentSubject[InvoicePaper, InvoiceDocument]):
    kind = "invoice"
    job = jobs.RENDER_INVOICE_PDF
    document_model = InvoiceDocument
    subject_column = "invoice_id"
    status_column = "invoice_status"

    def load(self, session: Session, subject_id: str, *, lock: bool = False) -> InvoicePaper | None:
        invoice = _load(session, subject_id, lock=lock)
        if invoice is None:
            return None
        return InvoicePaper(invoice, _discounts_of(session, subject_id))

    def subject_id(self, source: InvoicePaper) -> str:
        return source.invoice.id

    def status(self, source: InvoicePaper) -> str:
        return source.invoice.status

    def skipped(self, source: InvoicePaper) -> str | None:
        return "skipped_draft" if source.invoice.status == "draft" else None

    def template_version(self) -> str:
        from billing.documents.invoice_pdf import TEMPLATE_VERSION

        return TEMPLATE_VERSION

    def fingerprint(self, source: InvoicePaper, template_version: str) -> str:
        return source_fingerprint(source.invoice, template_version, source.discounts)

    def render(self, source: InvoicePaper) -> RenderedPdf:
        # Imported here: WeasyPrint loads Pango and fonts, which only the pdf worker needs.
        from billing.documents.invoice_pdf import render_invoice_pdf

        invoice = source.invoice
        with PDF_RENDER_SECONDS.time():
            return render_invoice_pdf(
                invoice, seller(), invoice.customer.locale or "en_US", source.discounts
            )

    def issue(self, session: Session, source: InvoicePaper) -> None:
        if source.invoice.status in ISSUED:
            emails.queue_email(session, "invoice_issued", source.invoice)


def source_fingerprint(
    invoice: Invoice, template_version: str, discounts: Sequence[InvoiceDiscount] = ()
) -> str:
    """Everything the invoice's document shows, hashed."""
    return _hashed(
        {
            "template": template_version,
            "seller": _seller_source(invoice.seller_party),
            "invoice": [
                invoice.id,
                invoice.number,
                invoice.status,
                invoice.currency,
                invoice.collection_method,
                invoice.description,
                invoice.buyer_reference,
                str(invoice.due_date),
                str(invoice.finalized_at),
                str(invoice.paid_at),
                str(invoice.voided_at),
                invoice.subtotal,
                invoice.discount,
                invoice.tax,
                invoice.total,
                invoice.amount_paid,
                invoice.amount_refunded,
                invoice.balance_applied,
                invoice.amount_credited,
            ],
            "customer": _buyer_source(invoice),
            "lines": [
                [
                    line.id,
                    line.description,
                    line.quantity,
                    line.unit_amount,
                    str(line.tax_rate),
                    line.amount,
                    line.discount_amount,
                    line.tax,
                    getattr(line, "tax_reason", None),
                    # Only where it is set: every other invoice's fingerprint stays as it was.
                    *(["tax_inclusive"] if getattr(line, "tax_inclusive", False) else []),
                ]
                for line in invoice.lines
            ],
            "discounts": [[d.id, d.description, d.amount] for d in discounts],
        }
    )


def _load(session: Session, invoice_id: str, *, lock: bool = False) -> Invoice | None:
    query = (
        select(Invoice)
        .where(Invoice.id == invoice_id)
        .options(joinedload(Invoice.customer), selectinload(Invoice.lines))
        .execution_options(populate_existing=True)
    )
    if lock:
        query = query.with_for_update(of=Invoice)
    return session.scalars(query).unique().one_or_none()


def _discounts_of(session: Session, invoice_id: str) -> list[InvoiceDiscount]:
    return list(
        session.scalars(
            select(InvoiceDiscount)
            .where(InvoiceDiscount.invoice_id == invoice_id)
            .order_by(InvoiceDiscount.id)
            .execution_options(populate_existing=True)
        )
    )


@dataclass(frozen=True)
class CreditNotePaper:
    """What a credit note's document is made of: the note (its lines loaded) and the
    invoice it corrects (customer loaded), whose parties it shows."""

    credit_note: CreditNote
    invoice: Invoice


class CreditNoteSubject(DocumentSubject[CreditNotePaper, CreditNoteDocument]):
    kind = "credit_note"
    job = jobs.RENDER_CREDIT_NOTE_PDF
    document_model = CreditNoteDocument
    subject_column = "credit_note_id"
    status_column = "credit_note_status"

    def load(
        self, session: Session, subject_id: str, *, lock: bool = False
    ) -> CreditNotePaper | None:
        query = (
            select(CreditNote)
            .where(CreditNote.id == subject_id)
            .options(selectinload(CreditNote.lines))
            .execution_options(populate_existing=True)
        )
        if lock:
            query = query.with_for_update(of=CreditNote)
        credit_note = session.scalars(query).one_or_none()
        if credit_note is None:
            return None
        invoice = _load(session, credit_note.invoice_id)
        assert invoice is not None  # a foreign key
        return CreditNotePaper(credit_note, invoice)

    def subject_id(self, source: CreditNotePaper) -> str:
        return source.credit_note.id

    def status(self, source: CreditNotePaper) -> str:
        return source.credit_note.status

    def template_version(self) -> str:
        from billing.documents.credit_note_pdf import TEMPLATE_VERSION

        return TEMPLATE_VERSION

    def fingerprint(self, source: CreditNotePaper, template_version: str) -> str:
        note, invoice = source.credit_note, source.invoice
        return _hashed(
            {
                "template": template_version,
                "seller": _seller_source(invoice.seller_party),
                "customer": _buyer_source(invoice),
                "invoice": [
                    invoice.id,
                    invoice.number,
                    str(invoice.finalized_at),
                    invoice.buyer_reference,
                ],
                "credit_note": [
                    note.id,
                    note.number,
                    note.status,
                    note.currency,
                    note.reason,
                    note.memo,
                    note.subtotal,
                    note.tax,
                    note.total,
                    note.amount_due_reduction,
                    note.refund_amount,
                    note.credit_balance_amount,
                    note.out_of_band_amount,
                    str(note.issued_at),
                    str(note.voided_at),
                ],
                "lines": [
                    [
                        line.id,
                        line.description,
                        line.quantity,
                        str(line.tax_rate),
                        line.amount,
                        line.tax,
                        getattr(line, "tax_reason", None),
                    ]
                    for line in note.lines
                ],
            }
        )

    def render(self, source: CreditNotePaper) -> RenderedPdf:
        from billing.documents.credit_note_pdf import render_credit_note_pdf

        locale = source.invoice.customer.locale or "en_US"
        with PDF_RENDER_SECONDS.time():
            return render_credit_note_pdf(source.credit_note, source.invoice, seller(), locale)

    def issue(self, session: Session, source: CreditNotePaper) -> None:
        if source.credit_note.status == CreditNoteStatus.ISSUED:
            emails.queue_email(
                session, "credit_note_issued", source.invoice, occasion=source.credit_note.id
            )


INVOICES = InvoiceSubject()
CREDIT_NOTES = CreditNoteSubject()


def latest_document(session: Session, invoice_id: str) -> InvoiceDocument | None:
    return INVOICES.latest(session, invoice_id)


def latest_credit_note_document(session: Session, credit_note_id: str) -> CreditNoteDocument | None:
    return CREDIT_NOTES.latest(session, credit_note_id)


def render_invoice(invoice_id: str, force: bool = False, *, work: JobWork | None = None) -> str:
    """The `pdf.render_invoice` job. Returns what it did: stored, unchanged or skipped.

    `force` (an operator's rerender) renders even when the invoice's fingerprint matches
    the latest document: after a fix to the template, the fonts or the renderer that did
    not change the fingerprint. Identical bytes are still never stored twice."""
    return render_document(INVOICES, invoice_id, force, work=work)


def render_credit_note(
    credit_note_id: str, force: bool = False, *, work: JobWork | None = None
) -> str:
    """The `pdf.render_credit_note` job, as render_invoice is for invoices."""
    return render_document(CREDIT_NOTES, credit_note_id, force, work=work)


def render_document(
    subject: DocumentSubject[S, D], subject_id: str, force: bool = False, *, work: JobWork | None
) -> str:
    """Render `subject_id`'s document and store it as its newest version, unless nothing
    it shows changed. Returns what it did: stored, unchanged or skipped."""
    storage = (work or JobWork.outside_a_job()).gateways.storage
    template_version = subject.template_version()
    session: Session = db.session()
    for _ in range(MAX_RENDER_ROUNDS):
        source = subject.load(session, subject_id)
        if source is None:
            raise PermanentJobError(f"no {subject.kind} {subject_id}")
        skipped = subject.skipped(source)
        if skipped is not None:
            session.rollback()
            return skipped
        fingerprint = subject.fingerprint(source, template_version)
        latest = subject.latest(session, subject_id)
        if not force and latest is not None and latest.source_fingerprint == fingerprint:
            session.rollback()
            _make_sure_issued(subject, subject_id)
            return "unchanged"
        # No transaction stays open while rendering: rendering a long document is slow, and
        # its locks and pooled connection would be held all that time.
        session.rollback()
        rendered = subject.render(source)
        key = f"{subject_id}/{rendered.sha256}.pdf"
        if storage.name != "postgres":
            # Outside the transaction: an object nobody names yet is harmless if we die now.
            storage.put(key, rendered.content, PDF)
        with transaction() as tx:
            current = subject.load(tx, subject_id, lock=True)
            assert current is not None
            if subject.fingerprint(current, template_version) != fingerprint:
                continue  # changed while we rendered (paid, say): render what it is now
            outcome = _store(tx, subject, current, rendered, key, fingerprint, storage)
        return outcome
    raise PermanentJobError(f"{subject.kind} {subject_id} kept changing while it was rendered")


def _store(
    session: Session,
    subject: DocumentSubject[S, D],
    source: S,
    rendered: RenderedPdf,
    key: str,
    fingerprint: str,
    storage: DocumentStorage,
) -> str:
    subject_id = subject.subject_id(source)
    if subject.same_bytes(session, subject_id, rendered.sha256) is not None:
        return "unchanged"
    if storage.name == "postgres":
        # In this transaction: the bytes and the row naming them commit together.
        storage.put(key, rendered.content, PDF)
    version = subject.next_version(session, subject_id)
    session.add(
        subject.document(
            source,
            version=version,
            sha256=rendered.sha256,
            size=len(rendered.content),
            storage=storage.name,
            storage_key=key,
            template_version=rendered.template_version,
            renderer_version=rendered.renderer_version,
            source_fingerprint=fingerprint,
        )
    )
    # The first document is what the "issued" email carries; its unique key makes this a
    # no-op for every later version.
    subject.issue(session, source)
    log.info(
        "pdf.stored",
        **{subject.subject_column: subject_id},
        version=version,
        sha256=rendered.sha256,
    )
    return "stored"


def _make_sure_issued(subject: DocumentSubject[S, D], subject_id: str) -> None:
    with transaction() as session:
        source = subject.load(session, subject_id)
        if source is not None:
            subject.issue(session, source)


def _render_pending(session: Session, subject: DocumentSubject[S, D], subject_id: str) -> bool:
    # The render jobs name their subject by the same name as its documents' column.
    pending = has_unfinished_job(subject.job, subject.subject_column, subject_id)
    return bool(session.scalar(select(pending)))


@dataclass(frozen=True)
class PdfAnswer:
    invoice: Invoice
    document: InvoiceDocument | None
    render_pending: bool


def pdf_of(invoice_id: str, *, customer_scope: str | None, version: int | None = None) -> PdfAnswer:
    """The newest document of an invoice (or its `version`), or that one is on its way."""
    session = db.session()
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or customer_scope not in (None, invoice.customer_id):
        raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
    if invoice.status == "draft":
        raise InvoiceNotFinalized("a draft invoice has no document yet", param="id")
    if version is not None:
        document = session.scalar(
            select(InvoiceDocument).where(
                InvoiceDocument.invoice_id == invoice_id, InvoiceDocument.version == version
            )
        )
        if document is None:
            raise NotFound(f"{invoice_id} has no version {version}", param="version")
        return PdfAnswer(invoice, document, render_pending=False)
    return PdfAnswer(
        invoice,
        latest_document(session, invoice_id),
        _render_pending(session, INVOICES, invoice_id),
    )


@dataclass(frozen=True)
class DocumentVersion:
    version: int
    invoice_status: str
    created_at: datetime


def versions_of(invoice_id: str) -> list[DocumentVersion]:
    """Every stored version of an invoice's document, newest first."""
    rows = db.session.execute(
        select(InvoiceDocument.version, InvoiceDocument.invoice_status, InvoiceDocument.created_at)
        .where(InvoiceDocument.invoice_id == invoice_id)
        .order_by(InvoiceDocument.version.desc())
    ).all()
    return [DocumentVersion(*row) for row in rows]


@dataclass(frozen=True)
class CreditNotePdfAnswer:
    credit_note: CreditNote
    document: CreditNoteDocument | None
    render_pending: bool


def credit_note_pdf_of(credit_note_id: str, *, customer_scope: str | None) -> CreditNotePdfAnswer:
    """The newest document of a credit note, or that one is on its way; its bytes are
    `document_content(answer.document)`."""
    session = db.session()
    credit_note = session.get(CreditNote, credit_note_id)
    if credit_note is None or customer_scope not in (None, credit_note.customer_id):
        raise NotFound(f"No such credit note: '{credit_note_id}'", param="id")
    return CreditNotePdfAnswer(
        credit_note,
        latest_credit_note_document(session, credit_note_id),
        _render_pending(session, CREDIT_NOTES, credit_note_id),
    )


def document_content(document: Document) -> bytes:
    return context.document_storage().get(document.storage_key)
