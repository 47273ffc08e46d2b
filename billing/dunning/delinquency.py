"""A customer is delinquent once dunning gave up on one of its invoices, and stays so
while any of its invoices is uncollectible or overdue."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from billing.models import Customer, Invoice
from billing.platform import clock
from billing.platform.logging import get_logger

log = get_logger(__name__)


def _still_owing(customer_id: str, paid_invoice_id: str) -> Any:
    return exists().where(
        Invoice.customer_id == customer_id,
        Invoice.id != paid_invoice_id,
        or_(
            Invoice.status == "uncollectible",
            and_(
                Invoice.status == "open",
                or_(Invoice.dunning_started_on.is_not(None), Invoice.due_date < clock.today()),
            ),
        ),
    )


def clear_if_settled(session: Session, invoice: Invoice) -> None:
    """Called as `invoice` is paid, in that transaction: clear the customer's flag when
    nothing else of theirs is uncollectible or overdue."""
    customer = invoice.customer
    if not customer.delinquent:
        return
    # The customer's row lock orders this with dunning flagging another of its invoices.
    locked = session.scalar(
        select(Customer.delinquent).where(Customer.id == customer.id).with_for_update()
    )
    if not locked or session.scalar(select(_still_owing(customer.id, invoice.id))):
        return
    customer.delinquent = False
    log.info("customer.delinquency_cleared", customer_id=customer.id, invoice_id=invoice.id)
