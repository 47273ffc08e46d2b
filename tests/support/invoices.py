"""Transient invoices (no database) for the PDF renderer's tests and benchmark."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billing.domain.money import round_half_up
from billing.models import CreditNote, CreditNoteLine, Customer, Invoice, InvoiceLine

FINALIZED_AT = datetime(2026, 3, 5, 10, 30, tzinfo=UTC)


def make_customer(**overrides: Any) -> Customer:
    fields: dict[str, Any] = {
        "id": "cus_test",
        "name": "Northwind Traders GmbH",
        "email": "accounts@northwind.example",
        "currency": "eur",
        "tax_id": "DE123456789",
        "address": {
            "line1": "Hauptstraße 5",
            "line2": "3. OG",
            "postal_code": "10115",
            "city": "Berlin",
            "country": "DE",
        },
    }
    fields.update(overrides)
    return Customer(**fields)


def make_line(
    index: int,
    *,
    description: str | None = None,
    quantity: int = 2,
    unit_amount: int = 12_345,
    tax_rate: str = "19",
) -> InvoiceLine:
    rate = Decimal(tax_rate)
    amount = quantity * unit_amount
    return InvoiceLine(
        id=f"il_{index:04d}",
        description=description or f"Consulting, work package {index + 1}",
        quantity=quantity,
        unit_amount=unit_amount,
        tax_rate=rate,
        amount=amount,
        tax=round_half_up(amount * rate / 100),
    )


def make_invoice(
    lines: list[InvoiceLine] | None = None,
    *,
    customer: Customer | None = None,
    line_count: int = 6,
    **overrides: Any,
) -> Invoice:
    """An open send_invoice invoice in EUR whose totals add up, as finalization leaves it."""
    if lines is None:
        lines = [make_line(i, tax_rate="19" if i % 3 else "7") for i in range(line_count)]
    subtotal = sum(line.amount for line in lines)
    tax = sum(line.tax for line in lines)
    fields: dict[str, Any] = {
        "id": "in_test",
        "number": "INV-2026-000042",
        "status": "open",
        "currency": "eur",
        "collection_method": "send_invoice",
        "subtotal": subtotal,
        "tax": tax,
        "total": subtotal + tax,
        "amount_paid": 0,
        "amount_refunded": 0,
        "created_at": datetime(2026, 3, 5, 9, 0, tzinfo=UTC),
        "finalized_at": FINALIZED_AT,
        "due_date": date(2026, 4, 4),
    }
    fields.update(overrides)
    return Invoice(customer=customer or make_customer(), lines=lines, **fields)


def make_credit_note(invoice: Invoice, **overrides: Any) -> CreditNote:
    """An issued credit note on `invoice` taking back one unit of its first line (at its
    rate) and a free €10.00 at 7 %, all off the amount due."""
    first = invoice.lines[0]
    lines = [
        CreditNoteLine(
            id="cnl_0001",
            invoice_line_id=first.id,
            description=first.description,
            quantity=1,
            tax_rate=first.tax_rate,
            amount=first.unit_amount,
            tax=round_half_up(first.unit_amount * Decimal(first.tax_rate) / 100),
        ),
        CreditNoteLine(
            id="cnl_0002",
            description="Goodwill credit",
            quantity=None,
            tax_rate=Decimal(7),
            amount=1_000,
            tax=70,
        ),
    ]
    subtotal = sum(line.amount for line in lines)
    tax = sum(line.tax for line in lines)
    fields: dict[str, Any] = {
        "id": "cn_test",
        "number": "CN-2026-000007",
        "invoice_id": invoice.id,
        "customer_id": invoice.customer.id,
        "currency": invoice.currency,
        "status": "issued",
        "reason": "order_change",
        "memo": None,
        "subtotal": subtotal,
        "tax": tax,
        "total": subtotal + tax,
        "amount_due_reduction": subtotal + tax,
        "refund_amount": 0,
        "credit_balance_amount": 0,
        "out_of_band_amount": 0,
        "issued_at": datetime(2026, 3, 12, 14, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return CreditNote(lines=lines, **fields)
