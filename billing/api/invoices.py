"""/v1/invoices"""

from __future__ import annotations

from flask import Blueprint

from billing.api.discounts import redemption
from billing.api.endpoint import ViewResult, customer_scope, endpoint
from billing.api.pdf import pdf_response, pending_response, xml_response
from billing.charging import charges
from billing.documents import documents
from billing.dunning import dunning
from billing.einvoices import service as einvoices
from billing.invoicing import invoices as service
from billing.platform import context
from billing.refunds import refunds
from billing.views import schemas
from billing.views.schemas import PdfPending
from billing.views.serializers import (
    dunning_preview_out,
    invoice_list_response,
    invoice_out,
    invoice_response,
    pay_response,
    refund_out,
)

bp = Blueprint("invoices", __name__, url_prefix="/v1/invoices")


def _line(line: schemas.LineCreate) -> service.LineFields:
    return service.LineFields(
        description=line.description,
        quantity=line.quantity,
        unit_amount=line.unit_amount,
        tax_rate=line.tax_rate,
        tax_rate_id=line.tax_rate_id,
        tax_category=line.tax_category,
    )


@endpoint(
    bp,
    "",
    "POST",
    summary="Create a draft invoice with lines",
    body=schemas.InvoiceCreate,
    response=schemas.InvoiceOut,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def create_invoice(body: schemas.InvoiceCreate) -> ViewResult:
    invoice = service.create_invoice(
        service.InvoiceFields(
            customer_id=body.customer,
            collection_method=body.collection_method,
            currency=body.currency,
            days_until_due=body.days_until_due,
            due_date=body.due_date,
            description=body.description,
            buyer_reference=body.buyer_reference,
            metadata=body.metadata,
            lines=[_line(line) for line in body.lines],
            discounts=[redemption(d) for d in body.discounts],
        )
    )
    return invoice_out(invoice), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List invoices, newest first",
    query=schemas.InvoiceListQuery,
    response=schemas.InvoiceList,
    errors=(400,),
)
def list_invoices(query: schemas.InvoiceListQuery) -> ViewResult:
    page = service.list_invoices(
        customer_scope=customer_scope(),
        customer_id=query.customer,
        status=query.status,
        limit=query.limit,
        starting_after=query.starting_after,
    )
    return invoice_list_response(page.items, has_more=page.has_more)


@endpoint(
    bp,
    "/<invoice_id>",
    "GET",
    summary="Retrieve an invoice",
    response=schemas.InvoiceOut,
    errors=(404,),
)
def get_invoice(invoice_id: str) -> ViewResult:
    return invoice_response(service.get_invoice(invoice_id, customer_scope=customer_scope()))


@endpoint(
    bp,
    "/<invoice_id>/dunning",
    "GET",
    summary="Preview the invoice's dunning: each retry, email and final step, with its date",
    response=schemas.DunningPreview,
    errors=(404,),
)
def get_dunning_preview(invoice_id: str) -> ViewResult:
    steps = dunning.preview(invoice_id, customer_scope=customer_scope())
    return dunning_preview_out(invoice_id, steps), 200


@endpoint(
    bp,
    "/<invoice_id>/lines",
    "POST",
    summary="Add a line to a draft invoice",
    body=schemas.LineCreate,
    response=schemas.InvoiceOut,
    admin_only=True,
    errors=(400, 403, 404, 409),
)
def add_line(invoice_id: str, body: schemas.LineCreate) -> ViewResult:
    line = service.add_line(invoice_id, _line(body))
    return invoice_out(line.invoice), 200


@endpoint(
    bp,
    "/<invoice_id>/lines/<line_id>",
    "DELETE",
    summary="Remove a line from a draft",
    response=schemas.InvoiceOut,
    admin_only=True,
    errors=(403, 404, 409),
)
def delete_line(invoice_id: str, line_id: str) -> ViewResult:
    return invoice_out(service.delete_line(invoice_id, line_id)), 200


@endpoint(
    bp,
    "/<invoice_id>/finalize",
    "POST",
    summary="Finalize a draft: number it, open it",
    response=schemas.InvoiceOut,
    admin_only=True,
    errors=(403, 404, 409, 422),
)
def finalize_invoice(invoice_id: str) -> ViewResult:
    return invoice_out(service.finalize_invoice(invoice_id), just_finalized=True), 200


@endpoint(
    bp,
    "/<invoice_id>/void",
    "POST",
    summary="Void an open or uncollectible invoice",
    response=schemas.InvoiceOut,
    admin_only=True,
    errors=(403, 404, 409),
)
def void_invoice(invoice_id: str) -> ViewResult:
    return invoice_out(service.void_invoice(invoice_id)), 200


@endpoint(
    bp,
    "/<invoice_id>/mark_uncollectible",
    "POST",
    summary="Mark an open invoice uncollectible",
    response=schemas.InvoiceOut,
    admin_only=True,
    errors=(403, 404, 409),
)
def mark_uncollectible(invoice_id: str) -> ViewResult:
    return invoice_out(service.mark_uncollectible(invoice_id)), 200


@endpoint(
    bp,
    "/<invoice_id>/pay",
    "POST",
    summary="Charge the invoice now: the attempt started, or the one already in flight",
    response=schemas.PayResponse,
    status=202,
    errors=(404, 409, 429),
)
def pay_invoice(invoice_id: str) -> ViewResult:
    request = charges.request_charge(
        invoice_id,
        customer_scope=customer_scope(),
        daily_attempt_cap=context.settings().pay_attempts_per_invoice_per_day,
    )
    return pay_response(request.attempt, request.job_id, request.created), 202


@endpoint(
    bp,
    "/<invoice_id>/refund",
    "POST",
    summary="Refund the invoice's payment, in full or in part",
    body=schemas.RefundCreate,
    response=schemas.RefundOut,
    status=202,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def refund_invoice(invoice_id: str, body: schemas.RefundCreate) -> ViewResult:
    request = refunds.request_refund(invoice_id, body.amount, body.reason)
    return refund_out(request.refund, job_id=request.job_id), 202


@endpoint(
    bp,
    "/<invoice_id>/pdf",
    "GET",
    summary="Download the invoice's newest PDF (202 with Retry-After while it is rendered)",
    response=None,
    media_type="application/pdf",
    other_answers=(
        (202, "The PDF is being rendered; ask again after Retry-After seconds", PdfPending),
        (304, "Not modified (If-None-Match named the current ETag)", None),
    ),
    errors=(404, 409),
)
def get_invoice_pdf(invoice_id: str) -> ViewResult:
    answer = documents.pdf_of(invoice_id, customer_scope=customer_scope())
    if answer.document is None:
        return pending_response(
            PdfPending(
                invoice=invoice_id,
                render_pending=answer.render_pending,
                message="The PDF is being rendered; ask again shortly.",
            )
        )
    return pdf_response(answer.document, f"invoice-{answer.invoice.number or invoice_id}.pdf")


@endpoint(
    bp,
    "/<invoice_id>/einvoice",
    "GET",
    summary="Download the invoice's EN 16931 e-invoice (CII or UBL XML)",
    query=schemas.EInvoiceQuery,
    response=None,
    media_type="application/xml",
    errors=(404, 409, 422),
)
def get_invoice_einvoice(invoice_id: str, query: schemas.EInvoiceQuery) -> ViewResult:
    xml = einvoices.invoice_einvoice(invoice_id, query.syntax, customer_scope=customer_scope())
    return xml_response(xml.content, xml.filename)
