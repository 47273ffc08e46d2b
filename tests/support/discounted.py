"""An issued invoice given two coupons and part of the customer's balance, written with the
models as finalizing such an invoice leaves it, for the tests of what its PDF and email
show. Its invoice must have been created with DISCOUNTED_LINES."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from billing.models import Coupon, Discount, Invoice, InvoiceDiscount
from billing.platform.unit_of_work import transaction

# €399.00 before discounts, all at 19 %.
DISCOUNTED_LINES = [
    {"description": "Platform seats", "quantity": 12, "unit_amount": 2500, "tax_rate": 19},
    {"description": "Support plan", "quantity": 1, "unit_amount": 9900, "tax_rate": 19},
]
# Spring sale: 20 % of each line (€60.00 + €19.80); loyalty: €10.00 spread €7.50 + €2.50.
LINE_DISCOUNTS = {"Platform seats": 6000 + 750, "Support plan": 1980 + 250}
# 19 % of €232.50 and of €76.70, each rounded: €44.18 + €14.57.
LINE_TAXES = {"Platform seats": 4418, "Support plan": 1457}
BALANCE_APPLIED = 5000


def give_discounts_and_balance(invoice_id: str) -> None:
    with transaction() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None
        now = datetime.now(UTC)
        for name, amount, coupon in (
            (
                "Spring sale (20% off)",
                7980,
                Coupon(name="Spring sale", percent_off=Decimal(20), duration="once"),
            ),
            (
                "Loyalty credit (€10.00 off)",
                1000,
                Coupon(name="Loyalty credit", amount_off=1000, currency="eur", duration="once"),
            ),
        ):
            session.add(coupon)
            session.flush()
            discount = Discount(
                coupon_id=coupon.id,
                customer_id=invoice.customer_id,
                invoice_id=invoice.id,
                start=now,
            )
            session.add(discount)
            session.flush()
            session.add(
                InvoiceDiscount(
                    invoice_id=invoice.id,
                    discount_id=discount.id,
                    coupon_id=coupon.id,
                    description=name,
                    amount=amount,
                )
            )
        for line in invoice.lines:
            line.discount_amount = LINE_DISCOUNTS[line.description]
            line.tax = LINE_TAXES[line.description]
        invoice.discount = sum(LINE_DISCOUNTS.values())
        invoice.tax = sum(LINE_TAXES.values())
        invoice.total = invoice.subtotal - invoice.discount + invoice.tax
        invoice.balance_applied = BALANCE_APPLIED
