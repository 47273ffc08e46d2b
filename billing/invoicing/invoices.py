"""Use cases for invoices: drafts and their lines, finalization, void, uncollectible."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import chain
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Date,
    String,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by, distinct_on
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from billing.balances import balances
from billing.charging import charges
from billing.charging import rules as charge_rules
from billing.charging.rules import ChargeStatus
from billing.customers.customers import get_customer
from billing.discounts import discounts
from billing.documents import documents
from billing.domain import parties
from billing.domain.money import AmountNotChargeable, charge_step, normalize_currency
from billing.dunning.schedule import next_payment_attempts
from billing.einvoices import service as einvoices
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.invoicing import rules
from billing.invoicing.rules import CollectionMethod, InvoiceStatus
from billing.models import (
    ChargeAttempt,
    Customer,
    EmailDelivery,
    Invoice,
    InvoiceDiscount,
    InvoiceDocument,
    InvoiceLine,
    Refund,
)
from billing.platform import clock, context
from billing.platform.errors import (
    Conflict,
    InvalidRequest,
    InvalidStateTransition,
    InvoiceNotEditable,
    NotFound,
    ServiceError,
    UnchargeableAmount,
)
from billing.platform.logging import get_logger
from billing.platform.pagination import Page
from billing.platform.prebuilt import Prebuilt
from billing.platform.unit_of_work import transaction
from billing.taxes import evidence, tax_rates
from billing.taxes.rules import TaxCategory, TaxDecision, TaxReason
from billing.taxes.tax_rates import TaxBook

log = get_logger(__name__)


@dataclass(frozen=True)
class LineFields:
    """A line to add. Its tax is the caller's own (`tax_rate` or a chosen `tax_rate_id`:
    `manual`), already decided (`tax_reason` set), or else the tax rules' for its
    customer and `tax_category`."""

    description: str
    quantity: int
    unit_amount: int
    tax_rate: Decimal | None = None
    tax_rate_id: str | None = None
    tax_reason: TaxReason | None = None
    tax_category: TaxCategory = TaxCategory.STANDARD
    # Its unit_amount holds its tax: set with a tax-inclusive rate object.
    tax_inclusive: bool = False

    @property
    def percentage(self) -> Decimal:
        return self.tax_rate if self.tax_rate is not None else Decimal(0)

    def taxed(self, decision: TaxDecision) -> LineFields:
        return replace(
            self,
            tax_rate=decision.percentage,
            tax_rate_id=decision.rate_id,
            tax_reason=decision.reason,
            tax_inclusive=decision.inclusive,
        )

    def for_totals(self) -> rules.TaxedLine:
        return rules.TaxedLine(self.quantity, self.unit_amount, self.percentage, self.tax_inclusive)


def taxed_line(
    session: Session, book: TaxBook, customer: Customer, fields: LineFields
) -> LineFields:
    """The line with its tax decided: the rate it takes, the rate object, and why."""
    if fields.tax_reason is not None:
        return fields
    if fields.tax_rate_id is not None:
        return fields.taxed(tax_rates.chosen_rate(session, fields.tax_rate_id, param="tax_rate_id"))
    if fields.tax_rate is not None:
        return fields.taxed(TaxDecision(fields.tax_rate, TaxReason.MANUAL))
    return fields.taxed(book.decide(customer, fields.tax_category))


@dataclass(frozen=True)
class InvoiceFields:
    customer_id: str
    collection_method: CollectionMethod = CollectionMethod.CHARGE_AUTOMATICALLY
    currency: str | None = None
    days_until_due: int | None = None
    due_date: date | None = None
    description: str | None = None
    # BT-10 of its e-invoice: the buyer's purchase order number or reference.
    buyer_reference: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    lines: list[LineFields] = field(default_factory=list)
    # Its own discounts, made for it alone.
    discounts: list[discounts.Redemption] = field(default_factory=list)
    # The subscription it bills (a final invoice): that subscription's discounts apply
    # instead of the customer's.
    subscription_id: str | None = None


def _now() -> datetime:
    # The service's clock: scheduled billing and dunning tests move it forward.
    return clock.now()


class ShownLine(NamedTuple):
    id: str
    invoice_id: str
    description: str
    quantity: int
    unit_amount: int
    tax_rate: Decimal
    amount: int
    discount_amount: int
    tax: int
    tax_rate_id: str | None
    tax_reason: str | None
    tax_inclusive: bool


class ShownAttempt(NamedTuple):
    id: str
    invoice_id: str
    status: str
    source: str
    amount: int
    currency: str
    payment_method: str | None
    stripe_payment_intent_id: str | None
    decline_code: str | None
    failure_message: str | None
    next_action: dict[str, Any] | None
    client_secret: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(slots=True)
class ShownInvoice:
    """An invoice as a response shows it, read as plain rows (no model to track changes of):
    its own columns but the party snapshots (only its PDFs and emails show those), its lines
    and its charge attempts."""

    id: str
    customer_id: str
    number: str | None
    status: str
    currency: str
    collection_method: str
    days_until_due: int | None
    due_date: date | None
    description: str | None
    buyer_reference: str | None
    metadata_: dict[str, str]
    subtotal: int
    discount: int
    tax: int
    total: int
    amount_paid: int
    amount_refunded: int
    balance_applied: int
    amount_credited: int
    credit_notes_total: int
    created_at: datetime
    finalized_at: datetime | None
    paid_at: datetime | None
    voided_at: datetime | None
    marked_uncollectible_at: datetime | None
    dunning_started_on: date | None
    # What VIES answered about a reverse-charged invoice's buyer, when it was asked.
    tax_evidence: dict[str, Any] | None
    # Its discount lines as the API shows them: {id, coupon, description, amount}.
    discounts: list[dict[str, Any]]
    lines: list[ShownLine] = field(default_factory=list)
    charge_attempts: list[ShownAttempt] = field(default_factory=list)

    @property
    def amount_due(self) -> int:
        return self.total - self.amount_paid - self.balance_applied - self.amount_credited

    @classmethod
    def of(cls, invoice: Invoice) -> ShownInvoice:
        """The model of an invoice just changed, as its response shows it."""
        columns = {name: getattr(invoice, name) for name in _INVOICE_FIELDS[:-1]}
        shown = cls(**columns, discounts=discount_lines(invoice.id))
        shown.lines = [_shown(ShownLine, line) for line in invoice.lines]
        shown.charge_attempts = [_shown(ShownAttempt, a) for a in invoice.charge_attempts]
        return shown


_Row = TypeVar("_Row", ShownLine, ShownAttempt)


def _shown(kind: type[_Row], model: Any) -> _Row:
    return kind(*(getattr(model, name) for name in kind._fields))


# In the order of the fields of ShownInvoice, ShownLine and ShownAttempt: rows are unpacked
# into them.
# Its discount lines come last: a model has no column of them.
_INVOICE_FIELDS = tuple(
    name for name in ShownInvoice.__dataclass_fields__ if name not in ("lines", "charge_attempts")
)
assert _INVOICE_FIELDS[-1] == "discounts"
# An invoice's discount lines ride along as one JSON array with its row: reading an
# invoice takes no statement more for them, however many it has.
_DISCOUNT_LINE = func.jsonb_build_object(
    literal_column("'id'"),
    InvoiceDiscount.discount_id,
    literal_column("'coupon'"),
    InvoiceDiscount.coupon_id,
    literal_column("'description'"),
    InvoiceDiscount.description,
    literal_column("'amount'"),
    InvoiceDiscount.amount,
)
_DISCOUNT_LINES = (
    select(
        func.coalesce(
            func.jsonb_agg(aggregate_order_by(_DISCOUNT_LINE, InvoiceDiscount.id)),
            literal_column("'[]'::jsonb"),
        )
    )
    .where(InvoiceDiscount.invoice_id == Invoice.id)
    .correlate(Invoice)
    .scalar_subquery()
)
_INVOICE_COLUMNS = tuple(
    type_coerce(_DISCOUNT_LINES, JSONB).label("discounts")
    if name == "discounts"
    else getattr(Invoice, name)
    for name in _INVOICE_FIELDS
)
_LINE_COLUMNS = tuple(getattr(InvoiceLine, name) for name in ShownLine._fields)
_ATTEMPT_COLUMNS = tuple(getattr(ChargeAttempt, name) for name in ShownAttempt._fields)
_INVOICE_IDS = bindparam("b_invoice_ids", type_=ARRAY(Invoice.id.type))
# Every read of an invoice runs these: built once, and sent prebuilt (billing.platform.prebuilt).
# One invoice and its lines, a row per line (one with no line when it has none).
_ONE_INVOICE = (
    select(*_INVOICE_COLUMNS, *_LINE_COLUMNS)
    .outerjoin(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
    .where(Invoice.id == bindparam("b_invoice_id"))
    .order_by(InvoiceLine.id)
)
_INVOICE = Prebuilt(_ONE_INVOICE)
_SCOPED_INVOICE = Prebuilt(_ONE_INVOICE.where(Invoice.customer_id == bindparam("b_customer_id")))
_INVOICES_WITH_LINES = Prebuilt(
    select(*_INVOICE_COLUMNS, *_LINE_COLUMNS)
    .outerjoin(InvoiceLine, InvoiceLine.invoice_id == Invoice.id)
    .where(Invoice.id == func.any(_INVOICE_IDS))
    .order_by(Invoice.id, InvoiceLine.id)
)
_LINES_OF = Prebuilt(
    select(*_LINE_COLUMNS)
    .where(InvoiceLine.invoice_id == func.any(_INVOICE_IDS))
    .order_by(InvoiceLine.id)
)
_ATTEMPTS_OF = Prebuilt(
    select(*_ATTEMPT_COLUMNS)
    .where(ChargeAttempt.invoice_id == func.any(_INVOICE_IDS))
    .order_by(ChargeAttempt.id)
)


def _add_charge_attempts(connection: Connection, invoices: dict[str, ShownInvoice]) -> None:
    for row in _ATTEMPTS_OF.execute(connection, {"b_invoice_ids": list(invoices)}):
        attempt = ShownAttempt._make(row)
        invoices[attempt.invoice_id].charge_attempts.append(attempt)


def get_invoice(invoice_id: str, *, customer_scope: str | None = None) -> ShownInvoice:
    """The invoice with its lines (one statement) and its charge attempts (another)."""
    connection = db.session.connection()
    if customer_scope is None:
        rows = _INVOICE.execute(connection, {"b_invoice_id": invoice_id}).all()
    else:
        rows = _SCOPED_INVOICE.execute(
            connection, {"b_invoice_id": invoice_id, "b_customer_id": customer_scope}
        ).all()
    if not rows:
        raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
    width = len(_INVOICE_COLUMNS)
    invoice = ShownInvoice(*rows[0][:width])
    invoice.lines = [ShownLine(*row[width:]) for row in rows if row[width] is not None]
    _add_charge_attempts(connection, {invoice.id: invoice})
    return invoice


def _locked_invoice(session: Session, invoice_id: str, customer_scope: str | None) -> Invoice:
    invoice = session.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)
    if invoice is None or (customer_scope is not None and invoice.customer_id != customer_scope):
        raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
    return invoice


def list_invoices(
    *,
    customer_scope: str | None,
    customer_id: str | None,
    status: InvoiceStatus | None,
    limit: int,
    starting_after: str | None,
) -> Page[ShownInvoice]:
    """A page of invoices, newest first, with their lines and charge attempts: three
    statements, whatever the page's length."""
    query = select(*_INVOICE_COLUMNS)
    if customer_scope is not None:
        query = query.where(Invoice.customer_id == customer_scope)
    if customer_id is not None:
        query = query.where(Invoice.customer_id == customer_id)
    if status is not None:
        query = query.where(Invoice.status == status.value)
    # Ids are ULIDs, so ordering by id is ordering by creation, and the cursor is the id.
    if starting_after is not None:
        query = query.where(Invoice.id < starting_after)
    rows = db.session.execute(query.order_by(Invoice.id.desc()).limit(limit + 1)).all()
    invoices = _with_lines_and_attempts({row.id: ShownInvoice(*row) for row in rows[:limit]})
    return Page(items=list(invoices.values()), has_more=len(rows) > limit)


def shown_invoices(session: Session, invoice_ids: Sequence[str]) -> dict[str, ShownInvoice]:
    """These invoices as a response shows them, by id: two prebuilt statements however
    many (the invoices with their lines, then their charge attempts)."""
    connection = session.connection()
    invoices: dict[str, ShownInvoice] = {}
    width = len(_INVOICE_COLUMNS)
    for row in _INVOICES_WITH_LINES.execute(connection, {"b_invoice_ids": list(invoice_ids)}):
        invoice = invoices.get(row[0])
        if invoice is None:
            invoice = invoices[row[0]] = ShownInvoice(*row[:width])
        if row[width] is not None:
            invoice.lines.append(ShownLine(*row[width:]))
    if invoices:
        _add_charge_attempts(connection, invoices)
    return invoices


def _with_lines_and_attempts(invoices: dict[str, ShownInvoice]) -> dict[str, ShownInvoice]:
    if invoices:
        connection = db.session.connection()
        for row in _LINES_OF.execute(connection, {"b_invoice_ids": list(invoices)}):
            line = ShownLine._make(row)
            invoices[line.invoice_id].lines.append(line)
        _add_charge_attempts(connection, invoices)
    return invoices


@dataclass(frozen=True)
class InvoiceHistory:
    """What a response shows of an invoice besides its row, lines and charge attempts: rows
    with the columns of Refund, EmailDelivery and InvoiceDocument that it shows, read as
    plain rows (no model to track changes of), as ShownInvoice is."""

    refunds: list[Any] = field(default_factory=list)
    emails: list[Any] = field(default_factory=list)
    document: Any | None = None  # the newest
    next_payment_attempt: datetime | None = None


# What a response shows of each, by the models' attribute names (the serializers read them
# from these rows as from the models).
_REFUNDS_OF = Prebuilt(
    select(
        Refund.id,
        Refund.invoice_id,
        Refund.status,
        Refund.amount,
        Refund.currency,
        Refund.reason,
        Refund.stripe_refund_id,
        Refund.failure_message,
        Refund.created_at,
    )
    .where(Refund.invoice_id == func.any(_INVOICE_IDS))
    .order_by(Refund.id)
)
_EMAILS_OF = Prebuilt(
    select(
        EmailDelivery.id,
        EmailDelivery.invoice_id,
        EmailDelivery.kind,
        EmailDelivery.recipient,
        EmailDelivery.status,
        EmailDelivery.error,
        EmailDelivery.attempts,
        EmailDelivery.message_id,
        EmailDelivery.created_at,
        EmailDelivery.sent_at,
    )
    .where(EmailDelivery.invoice_id == func.any(_INVOICE_IDS))
    .order_by(EmailDelivery.created_at, EmailDelivery.id)
)
# The newest version of each: DISTINCT ON keeps the first row of each invoice.
_NEWEST_DOCUMENTS_OF = Prebuilt(
    select(
        InvoiceDocument.invoice_id,
        InvoiceDocument.version,
        InvoiceDocument.invoice_status,
        InvoiceDocument.sha256,
        InvoiceDocument.size,
        InvoiceDocument.template_version,
        InvoiceDocument.renderer_version,
        InvoiceDocument.created_at,
    )
    .where(InvoiceDocument.invoice_id == func.any(_INVOICE_IDS))
    .order_by(InvoiceDocument.invoice_id, InvoiceDocument.version.desc())
    .ext(distinct_on(InvoiceDocument.invoice_id))
)


def invoice_histories(
    invoices: Sequence[ShownInvoice],
    *,
    just_finalized: bool = False,
    just_paid: frozenset[str] = frozenset(),
) -> dict[str, InvoiceHistory]:
    """The history of each invoice, by id, read for all of them at once: at most one
    statement for refunds, one for emails, one for documents and two for dunning, whatever
    their number, and none for what none of them can have yet.

    A refund is only ever recorded against money paid, and amount_paid never goes down: an
    invoice with nothing paid has none. A draft has neither emails nor documents, and nor
    has an invoice numbered by this very request (`just_finalized`): both are made by jobs
    recorded in its transaction. An invoice paid in this very transaction (`just_paid`)
    had nothing paid before it, so nothing refunded either."""
    paid = [i.id for i in invoices if i.amount_paid and i.id not in just_paid]
    issued = [] if just_finalized else [invoice.id for invoice in invoices if invoice.number]
    refunds: dict[str, list[Any]] = defaultdict(list)
    emails: dict[str, list[Any]] = defaultdict(list)
    documents: dict[str, Any] = {}
    if paid or issued:
        connection = db.session.connection()
        if paid:
            for refund in _REFUNDS_OF.execute(connection, {"b_invoice_ids": paid}):
                refunds[refund.invoice_id].append(refund)
        if issued:
            for email in _EMAILS_OF.execute(connection, {"b_invoice_ids": issued}):
                emails[email.invoice_id].append(email)
            for document in _NEWEST_DOCUMENTS_OF.execute(connection, {"b_invoice_ids": issued}):
                documents[document.invoice_id] = document
    next_attempts = next_payment_attempts(invoices)
    return {
        invoice.id: InvoiceHistory(
            refunds=refunds.get(invoice.id, []),
            emails=emails.get(invoice.id, []),
            document=documents.get(invoice.id),
            next_payment_attempt=next_attempts.get(invoice.id),
        )
        for invoice in invoices
    }


class DiscountOnInclusiveTax(InvalidRequest):
    code = "discount_on_tax_inclusive_lines"


class TooManyLines(ServiceError):
    code = "too_many_lines"
    status = 400


def _add_line(invoice: Invoice, fields: LineFields) -> InvoiceLine:
    """The line, taxed already (`taxed_line`); its tax is settled with the totals."""
    if len(invoice.lines) >= rules.MAX_LINES_PER_INVOICE:
        raise TooManyLines(
            f"an invoice holds at most {rules.MAX_LINES_PER_INVOICE} lines", param="lines"
        )
    try:
        amounts = rules.line_amounts(
            fields.quantity,
            fields.unit_amount,
            fields.percentage,
            step=charge_step(invoice.currency),
            tax_inclusive=fields.tax_inclusive,
        )
    except rules.AmountTooLarge as exc:
        raise InvalidRequest(str(exc), param="unit_amount") from exc
    except AmountNotChargeable as exc:
        raise UnchargeableAmount(str(exc), param="unit_amount") from exc
    line = InvoiceLine(
        description=fields.description,
        quantity=fields.quantity,
        unit_amount=fields.unit_amount,
        tax_rate=fields.percentage,
        tax_rate_id=fields.tax_rate_id,
        tax_reason=fields.tax_reason.value if fields.tax_reason is not None else None,
        tax_inclusive=fields.tax_inclusive,
        amount=amounts.amount,
        tax=amounts.tax,
    )
    invoice.lines.append(line)
    return line


def _taxed_at(
    session: Session, book: TaxBook, customer: Customer, fields: LineFields, param: str
) -> LineFields:
    try:
        return taxed_line(session, book, customer, fields)
    except ServiceError as exc:
        exc.param = f"{param}.{exc.param}" if exc.param else param
        raise


def discount_lines(invoice_id: str) -> list[dict[str, Any]]:
    """An invoice's discount lines as ShownInvoice holds them."""
    return list(
        db.session.scalar(
            select(type_coerce(_DISCOUNT_LINES, JSONB))
            .select_from(Invoice)
            .where(Invoice.id == invoice_id)
        )
        or []
    )


def _recompute_totals(
    invoice: Invoice, applied: Sequence[discounts.AppliedDiscount] = ()
) -> rules.InvoiceTotals:
    """The invoice's totals, and each line's discount share and tax, less `applied`."""
    try:
        totals = rules.invoice_totals(
            (
                rules.TaxedLine(ln.quantity, ln.unit_amount, ln.tax_rate, ln.tax_inclusive)
                for ln in invoice.lines
            ),
            step=charge_step(invoice.currency),
            discounts=[a.terms for a in applied],
        )
    except rules.AmountTooLarge as exc:
        raise InvalidRequest(str(exc), param="lines") from exc
    except AmountNotChargeable as exc:
        raise UnchargeableAmount(str(exc), param="lines") from exc
    except rules.InclusiveTaxDiscounted as exc:
        raise DiscountOnInclusiveTax(
            "discounts do not apply to lines at a tax-inclusive rate yet: give those lines "
            "an exclusive rate, or invoice them without the discount",
            param="lines",
        ) from exc
    for line, net, discount, tax in zip(
        invoice.lines, totals.line_nets, totals.line_discounts, totals.line_taxes, strict=True
    ):
        line.amount, line.discount_amount, line.tax = net, discount, tax
    invoice.subtotal, invoice.discount = totals.subtotal, totals.discount
    invoice.tax, invoice.total = totals.tax, totals.total
    return totals


def _recompute_draft(session: Session, invoice: Invoice) -> None:
    """A draft's totals after its lines changed: the discounts it took when it was made
    are shared anew, and its discount lines replaced."""
    applied = discounts.discounts_on_invoice(session, invoice.id)
    totals = _recompute_totals(invoice, applied)
    if applied:
        discounts.record_invoice_discounts(
            session, invoice.id, applied, totals.discount_amounts, replace=True
        )


def create_invoice(fields: InvoiceFields) -> Invoice:
    with transaction() as session:
        customer = get_customer(fields.customer_id)
        currency = normalize_currency(fields.currency) if fields.currency else customer.currency
        if currency != customer.currency:
            raise InvalidRequest(
                f"the customer is billed in {customer.currency}, not {currency}", param="currency"
            )
        if fields.collection_method is CollectionMethod.CHARGE_AUTOMATICALLY and (
            fields.days_until_due is not None or fields.due_date is not None
        ):
            raise InvalidRequest(
                "days_until_due and due_date apply only to send_invoice invoices",
                param="days_until_due" if fields.days_until_due is not None else "due_date",
            )
        if fields.days_until_due is not None and fields.due_date is not None:
            raise InvalidRequest("give days_until_due or due_date, not both", param="due_date")
        invoice = Invoice(
            customer_id=customer.id,
            currency=currency,
            collection_method=fields.collection_method.value,
            days_until_due=fields.days_until_due,
            due_date=fields.due_date,
            description=fields.description,
            buyer_reference=fields.buyer_reference,
            metadata_=fields.metadata,
            status=InvoiceStatus.DRAFT.value,
        )
        book = TaxBook(session)
        for index, line in enumerate(fields.lines):
            _add_line(invoice, _taxed_at(session, book, customer, line, f"lines.{index}"))
        _recompute_totals(invoice)
        session.add(invoice)
        session.flush()
        for index, redemption in enumerate(fields.discounts):
            discounts.redeem(
                session,
                customer,
                redemption,
                invoice_id=invoice.id,
                param=f"discounts.{index}",
            )
        (applied,) = discounts.applicable_discounts(
            session,
            [
                discounts.InvoiceDiscountsWanted(
                    customer_id=customer.id,
                    subscription_id=fields.subscription_id,
                    invoice_id=invoice.id if fields.discounts else None,
                    period_start=_now(),
                    currency=currency,
                )
            ],
        )
        if applied:
            totals = _recompute_totals(invoice, applied)
            discounts.record_invoice_discounts(
                session, invoice.id, applied, totals.discount_amounts
            )
        events.record(session, EventType.INVOICE_CREATED, invoice.id, invoice.customer_id)
    log.info("invoice.created", invoice_id=invoice.id, customer_id=invoice.customer_id)
    return invoice


def add_line(invoice_id: str, fields: LineFields) -> InvoiceLine:
    with transaction() as session:
        invoice = _locked_invoice(session, invoice_id, None)
        if not rules.lines_are_editable(InvoiceStatus(invoice.status)):
            raise InvoiceNotEditable(f"lines of a {invoice.status} invoice cannot change")
        customer = session.get_one(Customer, invoice.customer_id)
        line = _add_line(invoice, taxed_line(session, TaxBook(session), customer, fields))
        _recompute_draft(session, invoice)
    log.info("invoice.line_added", invoice_id=invoice_id, line_id=line.id)
    return line


def delete_line(invoice_id: str, line_id: str) -> Invoice:
    with transaction() as session:
        invoice = _locked_invoice(session, invoice_id, None)
        line = next((ln for ln in invoice.lines if ln.id == line_id), None)
        if line is None:
            raise NotFound(f"No such line: '{line_id}' on invoice '{invoice_id}'", param="line_id")
        if not rules.lines_are_editable(InvoiceStatus(invoice.status)):
            raise InvoiceNotEditable(f"lines of a {invoice.status} invoice cannot change")
        invoice.lines.remove(line)
        _recompute_draft(session, invoice)
    log.info("invoice.line_deleted", invoice_id=invoice_id, line_id=line_id)
    return invoice


def _check_transition(status: str, target: InvoiceStatus) -> None:
    try:
        rules.require_transition(status, target)
    except rules.InvalidStateTransition as exc:
        raise InvalidStateTransition(str(exc), param="status") from exc


def _transition(invoice: Invoice, target: InvoiceStatus) -> None:
    """Every change of an invoice's status: what the state machine allows, or a 409."""
    _check_transition(invoice.status, target)
    invoice.status = target.value


# The gapless series: one counter table each, a row per year.
NUMBER_SERIES = ("invoice_number_sequences", "credit_note_number_sequences")


def take_numbers(session: Session, series: str, year: int, count: int) -> int:
    """Reserve `count` consecutive numbers of `year` in `series`; returns the first. The
    counter row's lock is held until our commit: a concurrent finalization waits, and a
    rolled-back one gives its numbers back, so numbers have no gaps."""
    if series not in NUMBER_SERIES:
        raise ValueError(f"no number series {series!r}")
    # `series` is one of NUMBER_SERIES, never a caller's text.
    last = session.execute(
        text(
            f"INSERT INTO {series} (year, last_number) VALUES (:year, :count) "  # noqa: S608
            "ON CONFLICT (year) DO UPDATE "
            f"SET last_number = {series}.last_number + :count "
            "RETURNING last_number"
        ),
        {"year": year, "count": count},
    ).scalar_one()
    return int(last) - count + 1


def take_invoice_numbers(session: Session, year: int, count: int) -> int:
    return take_numbers(session, "invoice_number_sequences", year, count)


def _next_invoice_number(session: Session, year: int) -> str:
    return rules.format_invoice_number(year, take_invoice_numbers(session, year, 1))


_invoices = Invoice.__table__
_customers = Customer.__table__


# What finalize_many reads of its drafts, each with its customer's credit.
_DRAFT_COLUMNS = (
    _invoices.c.id,
    _invoices.c.customer_id,
    _invoices.c.status,
    _invoices.c.total,
    _invoices.c.currency,
    _invoices.c.collection_method,
    _invoices.c.due_date,
    _invoices.c.days_until_due,
    _customers.c.balance,
)
_DRAFTS_WITH_CREDIT = select(*_DRAFT_COLUMNS).join(
    _customers, _customers.c.id == _invoices.c.customer_id
)
_DRAFTS = Prebuilt(
    _DRAFTS_WITH_CREDIT.where(
        _invoices.c.id == func.any(bindparam("b_ids", type_=ARRAY(_invoices.c.id.type)))
    ).order_by(_invoices.c.id)
)
# Finalizing one invoice: the same, its row locked, with whether it has a line. One
# statement rather than the invoice and its lines loaded as models and then read again.
_DRAFT_TO_FINALIZE = Prebuilt(
    _DRAFTS_WITH_CREDIT.add_columns(
        exists().where(InvoiceLine.invoice_id == _invoices.c.id).label("has_lines")
    )
    .where(_invoices.c.id == bindparam("b_invoice_id"))
    .with_for_update(of=_invoices)
)


def finalize_invoice(invoice_id: str) -> ShownInvoice:
    """Finalize one draft (finalize_many's way), answering it as a response shows it."""
    with transaction() as session:
        session.flush()  # a caller's draft made through the models (a subscription's)
        draft = _DRAFT_TO_FINALIZE.execute(
            session.connection(), {"b_invoice_id": invoice_id}
        ).one_or_none()
        if draft is None:
            raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
        _check_transition(draft.status, InvoiceStatus.OPEN)
        if not draft.has_lines:
            raise InvalidRequest("an invoice needs at least one line to be finalized")
        if draft.total < 0:
            raise InvalidRequest("an invoice's total cannot be negative")
        einvoices.check_draft_before_finalizing(session, invoice_id)
        finalize_many(session, [invoice_id], _now(), drafts=[draft])
        # The caller's model of it, if it holds one, is read again when next used.
        held = session.identity_map.get(identity_key(Invoice, invoice_id))
        if held is not None:
            session.expire(held)
        shown = shown_invoices(session, [invoice_id])[invoice_id]
    log.info("invoice.finalized", invoice_id=invoice_id, number=shown.number)
    return shown


# Every invoice of a finalization in one statement, whatever their number: the values come
# as arrays, unnested in step.
_FINALIZING = (
    func.unnest(
        bindparam("b_ids", type_=ARRAY(String())),
        bindparam("b_numbers", type_=ARRAY(String())),
        bindparam("b_statuses", type_=ARRAY(String())),
        bindparam("b_due_dates", type_=ARRAY(Date())),
    )
    .table_valued("id", "number", "status", "due_date")
    .render_derived(name="finalizing")
)
# With the invoices, their parties as they stand now: the buyer from the customer's row,
# the seller from the settings; an issued invoice shows these ever after
# (`billing.domain.parties`).
_FINALIZED = (
    update(_invoices)
    .where(_invoices.c.id == _FINALIZING.c.id, _customers.c.id == _invoices.c.customer_id)
    .values(
        seller_party=bindparam("b_seller_party", type_=JSONB),
        buyer_party=func.jsonb_build_object(
            *chain.from_iterable(
                (literal_column(f"'{key}'"), _customers.c[key]) for key in parties.BUYER_KEYS
            )
        ),
        number=_FINALIZING.c.number,
        status=_FINALIZING.c.status,
        due_date=_FINALIZING.c.due_date,
        finalized_at=bindparam("b_now"),
        paid_at=case(
            (_FINALIZING.c.status == InvoiceStatus.PAID.value, bindparam("b_now")), else_=None
        ),
    )
)


def finalize_many(
    session: Session,
    invoice_ids: Sequence[str],
    now: datetime,
    *,
    drafts: Sequence[Any] | None = None,
) -> None:
    """The one way invoices leave draft, for one invoice (finalize_invoice) or a billing
    run's chunk alike, in the caller's transaction; the invoices are drafts with their lines
    and totals, row-locked or just inserted by the caller. Each gets its due date (when the
    customer pays it by transfer), its charge attempt (when charged and there is something
    to pay), its PDF job (which sends the "invoice issued" email), its parties and its
    number; a zero invoice is paid at once, as Stripe does. A table at a time, the invoices
    themselves in one update, so that a chunk of a thousand takes as many statements as one
    invoice. `drafts`: the invoices' rows as the caller read them already (_DRAFT_COLUMNS,
    ordered by id)."""
    if not invoice_ids:
        return
    if drafts is None:
        drafts = _DRAFTS.execute(session.connection(), {"b_ids": list(invoice_ids)}).all()
    default_days = context.settings().default_days_until_due
    for draft in drafts:
        rules.require_transition(draft.status, InvoiceStatus.OPEN)
    # The customers' credit pays what it can before anything is charged. Only customers
    # seen holding some are locked and read again: credit given after this read is simply
    # left for their next invoice, as if it had come a moment later.
    applied = balances.apply_to_invoices(
        session, [balances.Due(d.id, d.customer_id, d.total) for d in drafts if d.balance > 0]
    )
    finalized: list[tuple[str, InvoiceStatus, date | None]] = []
    charged: list[tuple[str, int, str]] = []
    for draft in drafts:
        status = InvoiceStatus.OPEN
        to_collect = draft.total - applied.get(draft.id, 0)
        if to_collect == 0:
            # Nothing to collect: Stripe marks a zero invoice paid at finalization.
            status = rules.require_transition(status, InvoiceStatus.PAID)
        due_date = draft.due_date
        if draft.collection_method == CollectionMethod.SEND_INVOICE and due_date is None:
            days = draft.days_until_due if draft.days_until_due is not None else default_days
            due_date = (now + timedelta(days=days)).date()
        if draft.collection_method == CollectionMethod.CHARGE_AUTOMATICALLY and to_collect > 0:
            charged.append((draft.id, to_collect, draft.currency))
        finalized.append((draft.id, status, due_date))
    ids = [invoice_id for invoice_id, _, _ in finalized]
    first = take_invoice_numbers(session, now.year, len(finalized))
    session.execute(
        _FINALIZED,
        {
            "b_ids": ids,
            "b_numbers": [
                rules.format_invoice_number(now.year, first + n) for n in range(len(finalized))
            ],
            "b_statuses": [status.value for _, status, _ in finalized],
            "b_due_dates": [due_date for _, _, due_date in finalized],
            "b_now": now,
            "b_seller_party": parties.configured_seller(context.settings()),
        },
    )
    # The rows that refer to the invoices come after the invoices' own update: each locks
    # its invoice (key share), and updating a row this transaction has locked costs more.
    charges.start_attempts(session, charged, source="automatic")
    documents.request_renders(session, ids)
    evidence.request_checks(session, ids)
    customers = {draft.id: draft.customer_id for draft in drafts}
    events.record_many(session, EventType.INVOICE_FINALIZED, list(customers.items()))
    events.record_many(
        session,
        EventType.INVOICE_PAID,
        [(i, customers[i]) for i, status, _ in finalized if status is InvoiceStatus.PAID],
    )


class PaymentInProgress(Conflict):
    code = "payment_in_progress"


class InvoiceHasCreditNotes(Conflict):
    code = "invoice_has_credit_notes"


def void_invoice(invoice_id: str) -> Invoice:
    with transaction() as session:
        invoice = _locked_invoice(session, invoice_id, None)
        _transition(invoice, InvoiceStatus.VOID)
        if invoice.credit_notes_total:
            # Its credit notes correct it and reference it; voiding it under them would
            # leave corrections of nothing (void the credit notes first, if they may be).
            raise InvoiceHasCreditNotes(
                "this invoice has credit notes; void them first", param="id"
            )
        for attempt in invoice.charge_attempts:
            if attempt.status == ChargeStatus.PENDING:
                _cancel_attempt(attempt)  # never sent: simply called off
            elif attempt.status in charge_rules.IN_FLIGHT:
                # Money may be moving (or the customer may still authenticate): voiding
                # now could leave a paid charge on a void invoice.
                raise PaymentInProgress(
                    f"charge attempt {attempt.id} is {attempt.status}; void it once it ends",
                    param="id",
                )
        invoice.voided_at = func.now()
        balances.give_back_for_void_invoice(session, invoice)
        events.record(session, EventType.INVOICE_VOIDED, invoice.id, invoice.customer_id)
    log.info("invoice.voided", invoice_id=invoice_id)
    return invoice


def _cancel_attempt(attempt: ChargeAttempt) -> None:
    attempt.status = charge_rules.require_transition(attempt.status, ChargeStatus.CANCELED).value


def mark_uncollectible(invoice_id: str) -> Invoice:
    with transaction() as session:
        invoice = _locked_invoice(session, invoice_id, None)
        record_uncollectible(invoice)
    log.info("invoice.marked_uncollectible", invoice_id=invoice_id)
    return invoice


def record_uncollectible(invoice: Invoice) -> None:
    """The change to uncollectible, in the caller's transaction with the invoice locked:
    an operator's mark and dunning's last step both make it here. Timed by the service's
    clock, which dunning's tests move."""
    _transition(invoice, InvoiceStatus.UNCOLLECTIBLE)
    invoice.marked_uncollectible_at = _now()
    events.record(
        db.session(), EventType.INVOICE_MARKED_UNCOLLECTIBLE, invoice.id, invoice.customer_id
    )
