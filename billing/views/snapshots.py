"""How the event log shows each kind of object: exactly as this API shows it.

Registered with billing.events at app creation; each loader reads its objects in the
transaction recording the events, a fixed number of statements however many."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from billing.events import events
from billing.events.rules import EventType
from billing.invoicing.invoices import invoice_histories, shown_invoices
from billing.models import (
    Coupon,
    CreditNote,
    Customer,
    CustomerBalanceTransaction,
    Discount,
    EmailDelivery,
    PromotionCode,
    Refund,
    Subscription,
)
from billing.views.serializers import (
    balance_transaction_out,
    coupon_out,
    credit_note_out,
    customer_out,
    discount_out,
    email_out,
    invoice_body,
    promotion_code_out,
    refund_out,
    subscription_out,
)

Recorded = Mapping[str, frozenset[EventType]]


def _customers(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(select(Customer).where(Customer.id.in_(list(ids))))
    return {c.id: customer_out(c).model_dump(mode="json") for c in rows}


def _invoices(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    shown = shown_invoices(session, list(ids))
    # Numbered in this very transaction: its emails and PDF are jobs not yet run, so its
    # history has none to read (as invoice_out(just_finalized=True) knows).
    fresh = [v for i, v in shown.items() if EventType.INVOICE_FINALIZED in ids[i]]
    older = [v for i, v in shown.items() if EventType.INVOICE_FINALIZED not in ids[i]]
    # Paid in this very transaction: nothing was paid before, so nothing refunded.
    just_paid = frozenset(i for i, types in ids.items() if EventType.INVOICE_PAID in types)
    histories = {
        **invoice_histories(fresh, just_finalized=True, just_paid=just_paid),
        **invoice_histories(older, just_paid=just_paid),
    }
    return {i: invoice_body(invoice, histories[i]) for i, invoice in shown.items()}


def _refunds(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(select(Refund).where(Refund.id.in_(list(ids))))
    return {r.id: refund_out(r).model_dump(mode="json") for r in rows}


def _subscriptions(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(
        select(Subscription)
        .where(Subscription.id.in_(list(ids)))
        .options(selectinload(Subscription.price))
    )
    return {s.id: subscription_out(s).model_dump(mode="json") for s in rows}


def _coupons(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(select(Coupon).where(Coupon.id.in_(list(ids))))
    return {c.id: coupon_out(c).model_dump(mode="json") for c in rows}


def _promotion_codes(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.execute(
        select(PromotionCode, Coupon)
        .join(Coupon, Coupon.id == PromotionCode.coupon_id)
        .where(PromotionCode.id.in_(list(ids)))
    )
    return {p.id: promotion_code_out(p, c).model_dump(mode="json") for p, c in rows}


def _discounts(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.execute(
        select(Discount, Coupon)
        .join(Coupon, Coupon.id == Discount.coupon_id)
        .where(Discount.id.in_(list(ids)))
    )
    return {d.id: discount_out(d, c).model_dump(mode="json") for d, c in rows}


def email_snapshot(delivery: Any) -> dict[str, Any]:
    """An email as its invoice's `emails` list shows it, with the invoice it is about (or
    the subscription, for an email about a subscription alone)."""
    return {
        **email_out(delivery).model_dump(mode="json"),
        "invoice": delivery.invoice_id,
        "subscription": delivery.subscription_id,
    }


def _emails(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(select(EmailDelivery).where(EmailDelivery.id.in_(list(ids))))
    return {e.id: email_snapshot(e) for e in rows}


def _credit_notes(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(
        select(CreditNote)
        .where(CreditNote.id.in_(list(ids)))
        .options(selectinload(CreditNote.lines), selectinload(CreditNote.refund))
    )
    return {n.id: credit_note_out(n).model_dump(mode="json") for n in rows}


def _balance_transactions(session: Session, ids: Recorded) -> Mapping[str, dict[str, Any]]:
    rows = session.scalars(
        select(CustomerBalanceTransaction).where(CustomerBalanceTransaction.id.in_(list(ids)))
    )
    return {t.id: balance_transaction_out(t).model_dump(mode="json") for t in rows}


def register() -> None:
    events.register_snapshot("customer", _customers)
    events.register_snapshot("invoice", _invoices)
    events.register_snapshot("refund", _refunds)
    events.register_snapshot("subscription", _subscriptions)
    events.register_snapshot("email", _emails, email_snapshot)
    events.register_snapshot("credit_note", _credit_notes)
    events.register_snapshot("customer_balance_transaction", _balance_transactions)
    events.register_snapshot("coupon", _coupons)
    events.register_snapshot("promotion_code", _promotion_codes)
    events.register_snapshot("discount", _discounts)
