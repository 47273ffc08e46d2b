"""/v1/credit_notes, and /v1/customers/{id}/balance_transactions"""

from __future__ import annotations

from flask import Blueprint

from billing.api.endpoint import ViewResult, customer_scope, endpoint
from billing.api.pdf import pdf_response, pending_response, xml_response
from billing.balances import balances
from billing.credit_notes import credit_notes as service
from billing.credit_notes.rules import LineRequest, Settlement
from billing.documents import documents
from billing.einvoices import service as einvoices
from billing.views import schemas
from billing.views.schemas import CreditNotePdfPending
from billing.views.serializers import (
    balance_transaction_out,
    credit_note_out,
    credit_note_preview_out,
)

bp = Blueprint("credit_notes", __name__, url_prefix="/v1/credit_notes")
balance_bp = Blueprint("balance_transactions", __name__, url_prefix="/v1/customers")


def _fields(body: schemas.CreditNoteCreate) -> service.CreditNoteFields:
    settlement = None
    if body.settlement is not None:
        settlement = {
            Settlement.AMOUNT_DUE: body.settlement.amount_due,
            Settlement.REFUND: body.settlement.refund,
            Settlement.CREDIT_BALANCE: body.settlement.credit_balance,
            Settlement.OUT_OF_BAND: body.settlement.out_of_band,
        }
    return service.CreditNoteFields(
        invoice_id=body.invoice,
        lines=[
            LineRequest(line.invoice_line, quantity=line.quantity, amount=line.amount)
            for line in body.lines
        ],
        amount=body.amount,
        reason=body.reason,
        memo=body.memo,
        currency=body.currency,
        settlement=settlement,
        metadata=body.metadata,
    )


@endpoint(
    bp,
    "",
    "POST",
    summary="Issue a credit note against a finalized invoice, and settle it",
    body=schemas.CreditNoteCreate,
    response=schemas.CreditNoteOut,
    admin_only=True,
    errors=(400, 403, 404, 409, 422),
)
def create_credit_note(body: schemas.CreditNoteCreate) -> ViewResult:
    return credit_note_out(service.create_credit_note(_fields(body))), 200


@endpoint(
    bp,
    "/preview",
    "POST",
    summary="Compute a credit note as it would be issued now, issuing nothing",
    body=schemas.CreditNoteCreate,
    response=schemas.CreditNoteOut,
    admin_only=True,
    errors=(400, 403, 404, 409, 422),
)
def preview_credit_note(body: schemas.CreditNoteCreate) -> ViewResult:
    preview = service.preview_credit_note(_fields(body))
    return credit_note_preview_out(preview, body.reason.value, body.memo), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List credit notes, newest first",
    query=schemas.CreditNoteListQuery,
    response=schemas.CreditNoteList,
    errors=(400,),
)
def list_credit_notes(query: schemas.CreditNoteListQuery) -> ViewResult:
    page = service.list_credit_notes(
        customer_scope=customer_scope(),
        customer_id=query.customer,
        invoice_id=query.invoice,
        status=query.status,
        limit=query.limit,
        starting_after=query.starting_after,
    )
    return schemas.CreditNoteList(
        data=[credit_note_out(note) for note in page.items], has_more=page.has_more
    ), 200


@endpoint(
    bp,
    "/<credit_note_id>",
    "GET",
    summary="Retrieve a credit note",
    response=schemas.CreditNoteOut,
    errors=(404,),
)
def get_credit_note(credit_note_id: str) -> ViewResult:
    return credit_note_out(
        service.get_credit_note(credit_note_id, customer_scope=customer_scope())
    ), 200


@endpoint(
    bp,
    "/<credit_note_id>/pdf",
    "GET",
    summary="Download the credit note's newest PDF (202 with Retry-After while it is rendered)",
    response=None,
    media_type="application/pdf",
    other_answers=(
        (
            202,
            "The PDF is being rendered; ask again after Retry-After seconds",
            CreditNotePdfPending,
        ),
        (304, "Not modified (If-None-Match named the current ETag)", None),
    ),
    errors=(404,),
)
def get_credit_note_pdf(credit_note_id: str) -> ViewResult:
    answer = documents.credit_note_pdf_of(credit_note_id, customer_scope=customer_scope())
    if answer.document is None:
        return pending_response(
            CreditNotePdfPending(
                credit_note=credit_note_id,
                render_pending=answer.render_pending,
                message="The PDF is being rendered; ask again shortly.",
            )
        )
    return pdf_response(answer.document, f"credit-note-{answer.credit_note.number}.pdf")


@endpoint(
    bp,
    "/<credit_note_id>/einvoice",
    "GET",
    summary="Download the credit note's EN 16931 e-invoice (CII or UBL XML)",
    query=schemas.EInvoiceQuery,
    response=None,
    media_type="application/xml",
    errors=(404, 422),
)
def get_credit_note_einvoice(credit_note_id: str, query: schemas.EInvoiceQuery) -> ViewResult:
    xml = einvoices.credit_note_einvoice(
        credit_note_id, query.syntax, customer_scope=customer_scope()
    )
    return xml_response(xml.content, xml.filename)


@endpoint(
    bp,
    "/<credit_note_id>/void",
    "POST",
    summary="Void a credit note while nothing it settled has moved",
    response=schemas.CreditNoteOut,
    admin_only=True,
    errors=(403, 404, 409),
)
def void_credit_note(credit_note_id: str) -> ViewResult:
    return credit_note_out(service.void_credit_note(credit_note_id)), 200


@endpoint(
    balance_bp,
    "/<customer_id>/balance_transactions",
    "GET",
    summary="List a customer's balance transactions, newest first",
    query=schemas.ListQuery,
    response=schemas.BalanceTransactionList,
    errors=(400, 404),
)
def list_balance_transactions(customer_id: str, query: schemas.ListQuery) -> ViewResult:
    page = balances.list_transactions(
        customer_id,
        customer_scope=customer_scope(),
        limit=query.limit,
        starting_after=query.starting_after,
    )
    return schemas.BalanceTransactionList(
        data=[balance_transaction_out(entry) for entry in page.items], has_more=page.has_more
    ), 200


@endpoint(
    balance_bp,
    "/<customer_id>/balance_transactions",
    "POST",
    summary="Adjust a customer's balance by hand, with a reason",
    body=schemas.BalanceTransactionCreate,
    response=schemas.BalanceTransactionOut,
    admin_only=True,
    errors=(400, 403, 404, 422),
)
def adjust_balance(customer_id: str, body: schemas.BalanceTransactionCreate) -> ViewResult:
    return balance_transaction_out(balances.adjust(customer_id, body.amount, body.description)), 200
