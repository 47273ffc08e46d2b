"""Use cases for credit notes: preview, issue (and settle), void, read
(billing.credit_notes.rules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from billing.balances import balances
from billing.balances.rules import BalanceTransactionType
from billing.charging import charges
from billing.charging import rules as charge_rules
from billing.charging.rules import ChargeStatus
from billing.credit_notes import rules
from billing.credit_notes.rules import (
    CreditNoteReason,
    CreditNoteStatus,
    CreditRefused,
    LineRequest,
    Settlement,
)
from billing.documents import documents
from billing.domain.money import normalize_currency
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.invoicing.invoices import PaymentInProgress, take_numbers
from billing.invoicing.rules import PAYABLE, CollectionMethod, InvoiceStatus
from billing.models import ChargeAttempt, CreditNote, CreditNoteLine, Invoice, InvoiceLine
from billing.platform import clock
from billing.platform.errors import Conflict, InvalidRequest, NotFound
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.refunds import refunds

log = get_logger(__name__)


class CreditNoteRefused(InvalidRequest):
    """What the rules refused, with their code: the credit note is not issued."""

    def __init__(self, refused: CreditRefused) -> None:
        super().__init__(str(refused), param=refused.param)
        self.code = refused.code


class InvoiceNotCreditable(Conflict):
    code = "invoice_not_creditable"


class CreditNoteNotVoidable(Conflict):
    code = "credit_note_not_voidable"


@dataclass(frozen=True)
class CreditNoteFields:
    invoice_id: str
    lines: Sequence[LineRequest] = ()
    # A free amount, tax included, spread over the invoice's tax rates.
    amount: int | None = None
    reason: CreditNoteReason = CreditNoteReason.OTHER
    memo: str | None = None
    # Checked against the invoice's when given.
    currency: str | None = None
    settlement: Mapping[Settlement, int] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Preview:
    """A credit note as it would be issued now, and how it would be settled."""

    invoice: Invoice
    computation: rules.CreditComputation
    settlement: dict[Settlement, int]


def _invoice_for_credit(session: Session, invoice_id: str, *, lock: bool) -> Invoice:
    invoice = session.get(
        Invoice,
        invoice_id,
        with_for_update=lock,
        populate_existing=True,
        options=[selectinload(Invoice.lines)],
    )
    if invoice is None:
        raise NotFound(f"No such invoice: '{invoice_id}'", param="invoice")
    if invoice.status in (InvoiceStatus.DRAFT, InvoiceStatus.VOID):
        raise InvoiceNotCreditable(
            f"a {invoice.status} invoice cannot be credited: only a finalized one, open or "
            "paid (a draft is edited, a void one is void)",
            param="invoice",
        )
    return invoice


def _credited(session: Session, invoice_id: str) -> list[rules.CreditedLine]:
    rows = session.execute(
        select(
            CreditNoteLine.invoice_line_id,
            CreditNoteLine.tax_rate,
            CreditNoteLine.quantity,
            CreditNoteLine.amount,
            CreditNoteLine.tax,
        )
        .join(CreditNote, CreditNote.id == CreditNoteLine.credit_note_id)
        .where(
            CreditNote.invoice_id == invoice_id,
            CreditNote.status == CreditNoteStatus.ISSUED.value,
        )
    ).all()
    return [rules.CreditedLine(*row) for row in rows]


def _facts(line: InvoiceLine) -> rules.InvoiceLineFacts:
    return rules.InvoiceLineFacts(
        id=line.id,
        description=line.description,
        quantity=line.quantity,
        tax_rate=line.tax_rate,
        net=line.amount - line.discount_amount,
        tax=line.tax,
    )


def _compute(session: Session, fields: CreditNoteFields, *, lock: bool) -> Preview:
    invoice = _invoice_for_credit(session, fields.invoice_id, lock=lock)
    if fields.currency is not None and normalize_currency(fields.currency) != invoice.currency:
        raise InvalidRequest(
            f"the invoice is in {invoice.currency}, a credit note of it is too", param="currency"
        )
    try:
        computation = rules.compute_credit(
            [_facts(line) for line in invoice.lines],
            _credited(session, invoice.id),
            fields.lines,
            fields.amount,
            "Credit",
        )
        creditable = invoice.total - invoice.credit_notes_total
        if computation.total > creditable:
            raise CreditRefused(
                "credit_exceeds_invoice",
                f"at most {creditable} of this invoice can still be credited",
                "lines" if fields.lines else "amount",
            )
        _, refundable = refunds.refundable(session, invoice)
        settlement = rules.settle(
            computation.total,
            fields.settlement,
            invoice_open=invoice.status in PAYABLE,
            amount_due=invoice.amount_due,
            refundable=refundable,
        )
    except CreditRefused as refused:
        raise CreditNoteRefused(refused) from refused
    return Preview(invoice, computation, settlement)


def preview_credit_note(fields: CreditNoteFields) -> Preview:
    """The credit note `create_credit_note` would issue now, issuing nothing."""
    with transaction() as session:
        return _compute(session, fields, lock=False)


def create_credit_note(fields: CreditNoteFields) -> CreditNote:
    """Issue a credit note of a finalized invoice and settle it, all in one transaction: its
    number, its lines, the invoice's reduced amount due (paid once nothing is left), its
    refund (recorded here, sent by its job exactly once), the credit into the customer's
    balance, its PDF job (which emails it) and its event."""
    with transaction() as session:
        preview = _compute(session, fields, lock=True)
        invoice, computation, settlement = preview.invoice, preview.computation, preview.settlement
        reduction = settlement.get(Settlement.AMOUNT_DUE, 0)
        recharge = _call_off_pending_charges(invoice) if reduction else False
        now = clock.now()
        note = CreditNote(
            number=rules.format_credit_note_number(
                now.year, take_numbers(session, "credit_note_number_sequences", now.year, 1)
            ),
            invoice_id=invoice.id,
            customer_id=invoice.customer_id,
            currency=invoice.currency,
            status=CreditNoteStatus.ISSUED.value,
            reason=fields.reason.value,
            memo=fields.memo,
            subtotal=computation.subtotal,
            tax=computation.tax,
            total=computation.total,
            amount_due_reduction=reduction,
            refund_amount=settlement.get(Settlement.REFUND, 0),
            credit_balance_amount=settlement.get(Settlement.CREDIT_BALANCE, 0),
            out_of_band_amount=settlement.get(Settlement.OUT_OF_BAND, 0),
            metadata_=fields.metadata,
            issued_at=now,
            lines=[
                CreditNoteLine(
                    invoice_line_id=line.invoice_line_id,
                    description=line.description,
                    quantity=line.quantity,
                    tax_rate=line.tax_rate,
                    amount=line.amount,
                    tax=line.tax,
                )
                for line in computation.lines
            ],
        )
        session.add(note)
        session.flush()
        # The database's own wall: credit_notes_total <= total (a CHECK).
        invoice.credit_notes_total += note.total
        if note.refund_amount:
            refunds.record_refund(
                session,
                invoice,
                note.refund_amount,
                f"credit note {note.number}",
                credit_note_id=note.id,
                param="settlement.refund",
            )
        if note.credit_balance_amount:
            balances.record(
                session,
                balances.locked_customer(session, invoice.customer_id),
                BalanceTransactionType.CREDIT_NOTE,
                note.credit_balance_amount,
                credit_note_id=note.id,
                description=f"credit note {note.number}",
            )
        if reduction:
            _reduce_amount_due(session, invoice, reduction, recharge=recharge)
        _request_papers(session, note)
        events.record(session, EventType.CREDIT_NOTE_CREATED, note.id, note.customer_id)
    log.info(
        "credit_note.issued",
        credit_note_id=note.id,
        number=note.number,
        invoice_id=note.invoice_id,
        total=note.total,
    )
    return note


def _in_flight(invoice: Invoice) -> list[ChargeAttempt]:
    return [a for a in invoice.charge_attempts if a.status in charge_rules.IN_FLIGHT]


def _refuse_while_charging(invoice: Invoice) -> None:
    """A charge already sent may take the amount due as it was: a change of that amount
    waits for it to end."""
    for attempt in _in_flight(invoice):
        if attempt.status != ChargeStatus.PENDING:
            raise PaymentInProgress(
                f"charge attempt {attempt.id} is {attempt.status}; change the amount due once "
                "it ends",
                param="invoice",
            )


def _call_off_pending_charges(invoice: Invoice) -> bool:
    """Call off the charge not yet sent (it asks the old amount); True if there was one."""
    _refuse_while_charging(invoice)
    pending = _in_flight(invoice)
    for attempt in pending:
        attempt.status = charge_rules.require_transition(
            attempt.status, ChargeStatus.CANCELED
        ).value
    return bool(pending)


def _reduce_amount_due(
    session: Session, invoice: Invoice, reduction: int, *, recharge: bool
) -> None:
    invoice.amount_credited += reduction
    if invoice.amount_due == 0:
        # Nothing left to collect: paid by the credit, as a payment would have; dunning
        # (which only looks at open invoices) stops.
        charges.mark_invoice_paid(charges.SqlChargeStore(session, None), invoice, 0)
    elif recharge and invoice.collection_method == CollectionMethod.CHARGE_AUTOMATICALLY:
        # The charge called off is asked again, for what is left.
        session.flush()
        charges.start_attempt(session, invoice, source="automatic")


def _request_papers(session: Session, note: CreditNote) -> None:
    """Its PDF (the first one is emailed to the customer; a void one is stamped VOID), and
    its invoice's next PDF when the invoice's amount due changed with it."""
    documents.request_credit_note_renders(session, [note.id])
    if note.amount_due_reduction:
        documents.request_renders(session, [note.invoice_id])


def void_credit_note(credit_note_id: str) -> CreditNote:
    """Void a credit note while nothing it settled has moved: no refund, no reduction of
    an invoice since paid, and its balance credit still unspent (it is taken back)."""
    with transaction() as session:
        note = session.get(CreditNote, credit_note_id, with_for_update=True, populate_existing=True)
        if note is None:
            raise NotFound(f"No such credit note: '{credit_note_id}'", param="id")
        if note.status == CreditNoteStatus.VOID:
            raise CreditNoteNotVoidable("this credit note is void already", param="id")
        if note.refund_amount:
            raise CreditNoteNotVoidable(
                "money was refunded for this credit note; it cannot be voided", param="id"
            )
        invoice = session.get(
            Invoice, note.invoice_id, with_for_update=True, populate_existing=True
        )
        assert invoice is not None
        if note.amount_due_reduction:
            if invoice.status not in PAYABLE:
                raise CreditNoteNotVoidable(
                    f"the invoice it reduced is {invoice.status} now; it cannot be voided",
                    param="id",
                )
            _refuse_while_charging(invoice)
        if note.credit_balance_amount:
            customer = balances.locked_customer(session, note.customer_id)
            if customer.balance < note.credit_balance_amount:
                raise CreditNoteNotVoidable(
                    "the balance it credited has been used; it cannot be voided", param="id"
                )
            balances.record(
                session,
                customer,
                BalanceTransactionType.CREDIT_NOTE_VOIDED,
                -note.credit_balance_amount,
                credit_note_id=note.id,
                description=f"credit note {note.number} voided",
            )
        invoice.credit_notes_total -= note.total
        invoice.amount_credited -= note.amount_due_reduction
        note.status = CreditNoteStatus.VOID.value
        note.voided_at = clock.now()
        _request_papers(session, note)
        events.record(session, EventType.CREDIT_NOTE_VOIDED, note.id, note.customer_id)
    log.info("credit_note.voided", credit_note_id=credit_note_id)
    return note


def get_credit_note(credit_note_id: str, *, customer_scope: str | None) -> CreditNote:
    note = db.session.get(CreditNote, credit_note_id)
    if note is None or customer_scope not in (None, note.customer_id):
        raise NotFound(f"No such credit note: '{credit_note_id}'", param="id")
    return note


def list_credit_notes(
    *,
    customer_scope: str | None,
    customer_id: str | None,
    invoice_id: str | None,
    status: CreditNoteStatus | None,
    limit: int,
    starting_after: str | None,
) -> Page[CreditNote]:
    query = select(CreditNote).options(selectinload(CreditNote.lines))
    if customer_scope is not None:
        query = query.where(CreditNote.customer_id == customer_scope)
    if customer_id is not None:
        query = query.where(CreditNote.customer_id == customer_id)
    if invoice_id is not None:
        query = query.where(CreditNote.invoice_id == invoice_id)
    if status is not None:
        query = query.where(CreditNote.status == status.value)
    return paginate(query, CreditNote.id, limit, starting_after)
