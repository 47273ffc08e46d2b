"""Use cases for the customer balance: its transactions, an admin's adjustment, and the
balance applied to invoices at their finalization (billing.balances.rules)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from billing.balances import rules
from billing.balances.rules import BalanceTransactionType
from billing.customers.customers import get_customer
from billing.events import events
from billing.events.rules import EventType
from billing.models import Customer, CustomerBalanceTransaction, Invoice
from billing.platform.errors import InvalidRequest, NotFound
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction

log = get_logger(__name__)


class BalanceInsufficient(InvalidRequest):
    code = "balance_insufficient"


def record(
    session: Session,
    customer: Customer,
    type_: BalanceTransactionType,
    amount: int,
    *,
    credit_note_id: str | None = None,
    invoice_id: str | None = None,
    description: str | None = None,
) -> CustomerBalanceTransaction:
    """The one way a balance changes: `customer` row-locked by the caller, in its
    transaction. The transaction carries the balance after it; the customer's row keeps
    the same figure, and neither can go below zero (nor can the same invoice or credit
    note move it twice the same way: unique indexes)."""
    after = customer.balance + amount
    if after < 0:
        raise BalanceInsufficient(
            f"the customer's balance is {customer.balance}; it cannot go below zero",
            param="amount",
        )
    customer.balance = after
    entry = CustomerBalanceTransaction(
        customer_id=customer.id,
        type=type_.value,
        amount=amount,
        currency=customer.currency,
        balance_after=after,
        credit_note_id=credit_note_id,
        invoice_id=invoice_id,
        description=description,
    )
    session.add(entry)
    session.flush()
    events.record(session, EventType.CUSTOMER_BALANCE_TRANSACTION_CREATED, entry.id, customer.id)
    return entry


def locked_customer(session: Session, customer_id: str) -> Customer:
    customer = session.get(Customer, customer_id, with_for_update=True, populate_existing=True)
    if customer is None:
        raise NotFound(f"No such customer: '{customer_id}'", param="id")
    return customer


def adjust(customer_id: str, amount: int, description: str) -> CustomerBalanceTransaction:
    """An admin's manual adjustment: credit given (positive) or taken back (negative)."""
    if amount == 0:
        raise InvalidRequest("an adjustment cannot be zero", param="amount")
    if not description.strip():
        raise InvalidRequest("say why the balance is adjusted", param="description")
    with transaction() as session:
        customer = locked_customer(session, customer_id)
        entry = record(
            session, customer, BalanceTransactionType.ADJUSTMENT, amount, description=description
        )
    log.info(
        "balance.adjusted", customer_id=customer_id, amount=amount, balance=entry.balance_after
    )
    return entry


def list_transactions(
    customer_id: str, *, customer_scope: str | None, limit: int, starting_after: str | None
) -> Page[CustomerBalanceTransaction]:
    get_customer(customer_id, customer_scope=customer_scope)
    query = select(CustomerBalanceTransaction).where(
        CustomerBalanceTransaction.customer_id == customer_id
    )
    return paginate(query, CustomerBalanceTransaction.id, limit, starting_after)


@dataclass(frozen=True)
class Due:
    invoice_id: str
    customer_id: str
    amount: int


_IDS = bindparam("b_ids", type_=ARRAY(Customer.id.type))
# The customers of a finalization that hold credit, locked in id order (two finalizations
# of invoices of the same customers take the locks in the same order, never each other's
# first); a customer with nothing to apply is neither locked nor written.
_HOLDING_CREDIT = (
    select(Customer)
    .where(Customer.id == func.any(_IDS), Customer.balance > 0)
    .order_by(Customer.id)
    .with_for_update()
    .execution_options(populate_existing=True)
)


_invoices = Invoice.__table__
_BALANCE_APPLIED = (
    update(_invoices)
    .where(_invoices.c.id == bindparam("b_invoice"))
    .values(balance_applied=bindparam("b_applied"))
)


def apply_to_invoices(session: Session, dues: Sequence[Due]) -> dict[str, int]:
    """At finalization, in its transaction: each invoice takes from its customer's balance
    what it can of its amount, in the order given. Returns what each invoice took (only
    those that took something). Once per invoice: a second application would break the
    unique index on (invoice, applied_to_invoice) and roll the finalization back."""
    wanted = sorted({due.customer_id for due in dues if due.amount > 0})
    if not wanted:
        return {}
    holders = {c.id: c for c in session.scalars(_HOLDING_CREDIT, {"b_ids": wanted})}
    applied: dict[str, int] = {}
    for due in dues:
        customer = holders.get(due.customer_id)
        if customer is None:
            continue
        amount = rules.applicable(customer.balance, due.amount)
        if amount:
            record(
                session,
                customer,
                BalanceTransactionType.APPLIED_TO_INVOICE,
                -amount,
                invoice_id=due.invoice_id,
            )
            applied[due.invoice_id] = amount
    if applied:
        session.execute(
            _BALANCE_APPLIED,
            [{"b_invoice": i, "b_applied": amount} for i, amount in applied.items()],
        )
    return applied


def give_back_for_void_invoice(session: Session, invoice: Invoice) -> None:
    """A voided invoice returns the balance it had taken, in the void's transaction."""
    if invoice.balance_applied:
        customer = locked_customer(session, invoice.customer_id)
        record(
            session,
            customer,
            BalanceTransactionType.INVOICE_VOIDED,
            invoice.balance_applied,
            invoice_id=invoice.id,
            description="returned when the invoice was voided",
        )
