"""Invoice PDFs: rendered on the pdf queue, stored with their hash, served by the API.

Rendering is idempotent without the ledger: a document is named by its invoice and the
SHA-256 of its bytes, so rendering the same invoice again either finds nothing changed
(the same source fingerprint: not even rendered) or produces the same bytes (not stored
twice). What shows on paper changing (paid, refunded) adds a new version; old versions
stay, as the customer received them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from billing.extensions import db
from billing.models import Invoice, InvoiceDocument
from billing.notifications import emails
from billing.platform import context, jobs
from billing.platform.errors import Conflict, NotFound, PermanentJobError
from billing.platform.logging import get_logger
from billing.platform.metrics import PDF_RENDER_SECONDS
from billing.platform.outbox import JobWork, has_unfinished_job, record_jobs
from billing.platform.unit_of_work import transaction

if TYPE_CHECKING:
    from billing.adapters.storage import DocumentStorage
    from billing.documents.invoice_pdf import RenderedPdf, Seller

log = get_logger(__name__)

PDF = "application/pdf"
# Statuses whose document is sent to the customer as "invoice issued".
ISSUED = ("open", "paid", "uncollectible")
# A render that keeps finding the invoice changed under it gives up and runs again later.
MAX_RENDER_ROUNDS = 3


class InvoiceNotFinalized(Conflict):
    code = "invoice_not_finalized"


def request_render(session: Session, invoice: Invoice) -> None:
    """Record a render of `invoice` in the caller's transaction (after its change)."""
    request_renders(session, [invoice.id])


def request_renders(session: Session, invoice_ids: Sequence[str]) -> None:
    """Record a render of each invoice in the caller's transaction, in one insert."""
    record_jobs(session, jobs.RENDER_INVOICE_PDF, [{"invoice_id": i} for i in invoice_ids])


@lru_cache(maxsize=4)
def _seller(
    name: str,
    address: tuple[str, ...],
    tax_id: str | None,
    email: str | None,
    logo_path: str | None,
    payment_instructions: str | None,
) -> Seller:
    from billing.documents.invoice_pdf import Seller

    return Seller(
        name=name,
        address_lines=address,
        tax_id=tax_id,
        email=email,
        logo_path=logo_path,
        payment_instructions=payment_instructions,
    )


def seller() -> Seller:
    s = context.settings()
    return _seller(
        s.seller_name,
        s.seller_address,
        s.seller_tax_id,
        s.seller_email,
        s.seller_logo_path,
        s.seller_payment_instructions,
    )


def source_fingerprint(invoice: Invoice, template_version: str) -> str:
    """Everything the document shows, hashed: equal fingerprints render equal documents."""
    customer = invoice.customer
    current = seller()
    source = {
        "template": template_version,
        # An issued invoice shows its own parties: only what still comes from the settings
        # (the logo, the payment instructions) and its snapshots count.
        "seller": repr(current)
        if invoice.seller_party is None
        else [invoice.seller_party, current.logo_path, current.payment_instructions],
        "invoice": [
            invoice.id,
            invoice.number,
            invoice.status,
            invoice.currency,
            invoice.collection_method,
            invoice.description,
            str(invoice.due_date),
            str(invoice.finalized_at),
            str(invoice.paid_at),
            str(invoice.voided_at),
            invoice.subtotal,
            invoice.tax,
            invoice.total,
            invoice.amount_paid,
            invoice.amount_refunded,
        ],
        "customer": [
            customer.name,
            customer.email,
            customer.address,
            customer.tax_id,
            customer.locale,
        ]
        if invoice.buyer_party is None
        else [invoice.buyer_party, customer.locale],
        "lines": [
            [
                line.id,
                line.description,
                line.quantity,
                line.unit_amount,
                str(line.tax_rate),
                line.amount,
                line.tax,
            ]
            for line in invoice.lines
        ],
    }
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()


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


def latest_document(session: Session, invoice_id: str) -> InvoiceDocument | None:
    return session.scalars(
        select(InvoiceDocument)
        .where(InvoiceDocument.invoice_id == invoice_id)
        .order_by(InvoiceDocument.version.desc())
        .limit(1)
    ).first()


def _render(invoice: Invoice) -> RenderedPdf:
    # Imported here: WeasyPrint loads Pango and fonts, which only the pdf worker needs.
    from billing.documents.invoice_pdf import render_invoice_pdf

    with PDF_RENDER_SECONDS.time():
        return render_invoice_pdf(invoice, seller(), invoice.customer.locale or "en_US")


def render_invoice(invoice_id: str, force: bool = False, *, work: JobWork | None = None) -> str:
    """The `pdf.render_invoice` job. Returns what it did: stored, unchanged or skipped.

    `force` (an operator's rerender) renders even when the invoice's fingerprint matches
    the latest document: after a fix to the template, the fonts or the renderer that did
    not change the fingerprint. Identical bytes are still never stored twice."""
    from billing.documents.invoice_pdf import TEMPLATE_VERSION

    storage = (work or JobWork.outside_a_job()).gateways.storage
    session: Session = db.session()
    for _ in range(MAX_RENDER_ROUNDS):
        invoice = _load(session, invoice_id)
        if invoice is None:
            raise PermanentJobError(f"no invoice {invoice_id}")
        if invoice.status == "draft":
            session.rollback()
            return "skipped_draft"
        fingerprint = source_fingerprint(invoice, TEMPLATE_VERSION)
        latest = latest_document(session, invoice_id)
        if not force and latest is not None and latest.source_fingerprint == fingerprint:
            session.rollback()
            _make_sure_issued(invoice_id)
            return "unchanged"
        # No transaction stays open while rendering: rendering a long invoice is slow, and
        # its locks and pooled connection would be held all that time.
        session.rollback()
        rendered = _render(invoice)
        key = f"{invoice_id}/{rendered.sha256}.pdf"
        if storage.name != "postgres":
            # Outside the transaction: an object nobody names yet is harmless if we die now.
            storage.put(key, rendered.content, PDF)
        with transaction() as tx:
            current = _load(tx, invoice_id, lock=True)
            assert current is not None
            if source_fingerprint(current, TEMPLATE_VERSION) != fingerprint:
                continue  # changed while we rendered (paid, say): render what it is now
            outcome = _store(tx, current, rendered, key, fingerprint, storage)
        return outcome
    raise PermanentJobError(f"invoice {invoice_id} kept changing while it was rendered")


def _store(
    session: Session,
    invoice: Invoice,
    rendered: RenderedPdf,
    key: str,
    fingerprint: str,
    storage: DocumentStorage,
) -> str:
    same = session.scalars(
        select(InvoiceDocument).where(
            InvoiceDocument.invoice_id == invoice.id, InvoiceDocument.sha256 == rendered.sha256
        )
    ).first()
    if same is not None:
        return "unchanged"
    if storage.name == "postgres":
        # In this transaction: the bytes and the row naming them commit together.
        storage.put(key, rendered.content, PDF)
    version = (
        session.scalar(
            select(func.max(InvoiceDocument.version)).where(
                InvoiceDocument.invoice_id == invoice.id
            )
        )
        or 0
    ) + 1
    session.add(
        InvoiceDocument(
            invoice_id=invoice.id,
            version=version,
            invoice_status=invoice.status,
            sha256=rendered.sha256,
            size=len(rendered.content),
            storage=storage.name,
            storage_key=key,
            template_version=rendered.template_version,
            renderer_version=rendered.renderer_version,
            source_fingerprint=fingerprint,
        )
    )
    if invoice.status in ISSUED:
        # The first document is what the "invoice issued" email carries; its unique key
        # makes this a no-op for every later version.
        emails.queue_email(session, "invoice_issued", invoice)
    log.info("pdf.stored", invoice_id=invoice.id, version=version, sha256=rendered.sha256)
    return "stored"


def _make_sure_issued(invoice_id: str) -> None:
    with transaction() as session:
        invoice = _load(session, invoice_id)
        if invoice is not None and invoice.status in ISSUED:
            emails.queue_email(session, "invoice_issued", invoice)


@dataclass(frozen=True)
class PdfAnswer:
    invoice: Invoice
    document: InvoiceDocument | None
    render_pending: bool


def pdf_of(invoice_id: str, *, customer_scope: str | None) -> PdfAnswer:
    """The newest document of an invoice, or that one is on its way."""
    session = db.session()
    invoice = session.get(Invoice, invoice_id)
    if invoice is None or customer_scope not in (None, invoice.customer_id):
        raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
    if invoice.status == "draft":
        raise InvoiceNotFinalized("a draft invoice has no document yet", param="id")
    document = latest_document(session, invoice_id)
    pending = bool(
        session.scalar(
            select(has_unfinished_job(jobs.RENDER_INVOICE_PDF, "invoice_id", invoice.id))
        )
    )
    return PdfAnswer(invoice, document, pending)


def document_content(document: InvoiceDocument) -> bytes:
    return context.document_storage().get(document.storage_key)
