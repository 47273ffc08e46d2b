"""A customer's first quarter, on the real servers under the service's moved clock: a
trial, a coupon for three months, a mid-period upgrade, a credit note on a paid invoice
settled half to the balance and half by refund, the balance used by the next invoice, and
the invoice after the coupon ran out. Every figure below was worked out by hand from the
rules (docs/design/subscriptions.md, discounts.md, credit-notes-and-balance.md), not read
back from the service."""

from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from billing.extensions import db
from billing.models import EmailDelivery, Event, Invoice, SubscriptionPeriod
from billing.platform import clock
from billing.subscriptions import subscriptions
from tests.conftest import intents_for_invoice

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

# Per invoice, in order: (period start, subtotal, discount, total, balance applied,
# charged on the card).
EXPECTED_INVOICES = [
    # The first period starts at the trial's end: one seat, 20% off.
    (datetime(2026, 1, 19, 9, tzinfo=UTC), 10_000, 2_000, 8_000, 0, 8_000),
    # Two seats, plus the upgrade of 1 February prorated over the 18 of the period's 31
    # days left: 10000 * 18 / 31 = 5806.45 credited (-5806), 20000 * 18 / 31 = 11612.90
    # charged (11613). Subtotal 20000 - 5806 + 11613 = 25807. The coupon takes 20% of the
    # positive lines, 31613 * 0.2 = 6322.6 -> 6323.
    (datetime(2026, 2, 19, 9, tzinfo=UTC), 25_807, 6_323, 19_484, 0, 19_484),
    # 20% off two seats; the 2000 credited to the balance pays part of it.
    (datetime(2026, 3, 19, 9, tzinfo=UTC), 20_000, 4_000, 16_000, 2_000, 14_000),
    # The coupon's three months ended on 8 April, before this period began.
    (datetime(2026, 4, 19, 9, tzinfo=UTC), 20_000, 0, 20_000, 0, 20_000),
]
# Newest first, as the API lists them: (type, amount, balance after).
EXPECTED_BALANCE = [
    ("applied_to_invoice", -2_000, 0),
    ("credit_note", 2_000, 2_000),
]
EXPECTED_EMAILS = Counter(
    {
        "trial_will_end": 1,
        "invoice_issued": 4,
        "payment_receipt": 4,
        "refund_issued": 1,
        "credit_note_issued": 1,
    }
)
EXPECTED_EVENTS = Counter(
    {
        "subscription.created": 1,
        "discount.created": 1,
        "subscription.trial_will_end": 1,
        "invoice.finalized": 4,
        "invoice.paid": 4,
        "credit_note.created": 1,
        "refund.succeeded": 1,
        "customer_balance_transaction.created": 2,
    }
)


@pytest.fixture(autouse=True)
def quarter_clock():
    clock.set_now(START)
    yield
    clock.reset()


def _at(admin, run_jobs, moment: datetime) -> None:
    """Move the clock, then do what beat does hourly, and run every job it made."""
    clock.set_now(moment)
    subscriptions.notify_trials_ending()
    subscriptions.run_billing()
    run_jobs()


def test_a_quarter_with_a_trial_a_coupon_an_upgrade_a_credit_note_and_the_balance(
    admin, paying_customer, run_jobs, stripe_client, mailbox
):
    customer = paying_customer()
    price = admin.post(
        "/v1/prices",
        json={
            "product": "Team plan",
            "unit_amount": 10_000,
            "currency": "eur",
            "interval": "month",
        },
    ).get_json()
    subscription = admin.post(
        "/v1/subscriptions",
        json={"customer": customer["id"], "price": price["id"], "trial_period_days": 14},
    ).get_json()
    assert (subscription["status"], subscription["latest_invoice"]) == ("trialing", None)

    _at(admin, run_jobs, datetime(2026, 1, 8, 9, tzinfo=UTC))
    coupon = admin.post(
        "/v1/coupons",
        json={
            "name": "Launch",
            "percent_off": "20",
            "duration": "repeating",
            "duration_in_months": 3,
        },
    ).get_json()
    attached = admin.post(
        f"/v1/subscriptions/{subscription['id']}/discounts", json={"coupon": coupon["id"]}
    )
    assert attached.status_code == 200, attached.get_json()

    # Three days before the trial ends, told once however many beats pass.
    _at(admin, run_jobs, datetime(2026, 1, 16, 9, tzinfo=UTC))
    _at(admin, run_jobs, datetime(2026, 1, 16, 10, tzinfo=UTC))
    _at(admin, run_jobs, datetime(2026, 1, 19, 9, tzinfo=UTC))

    _at(admin, run_jobs, datetime(2026, 2, 1, 9, tzinfo=UTC))
    upgraded = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"quantity": 2})
    assert upgraded.status_code == 200, upgraded.get_json()
    _at(admin, run_jobs, datetime(2026, 2, 19, 9, tzinfo=UTC))

    _at(admin, run_jobs, datetime(2026, 2, 25, 9, tzinfo=UTC))
    second = _invoices(subscription["id"])[1]
    note = admin.post(
        "/v1/credit_notes",
        json={
            "invoice": second.id,
            "amount": 4_000,
            "reason": "product_unsatisfactory",
            "settlement": {"credit_balance": 2_000, "refund": 2_000},
        },
    )
    assert note.status_code == 200, note.get_json()
    run_jobs()

    _at(admin, run_jobs, datetime(2026, 3, 19, 9, tzinfo=UTC))
    _at(admin, run_jobs, datetime(2026, 4, 19, 9, tzinfo=UTC))

    invoices = _invoices(subscription["id"])
    shown = [
        (
            _period_start(invoice.id),
            invoice.subtotal,
            invoice.discount,
            invoice.total,
            invoice.balance_applied,
            invoice.amount_paid,
        )
        for invoice in invoices
    ]
    assert shown == EXPECTED_INVOICES
    assert [invoice.status for invoice in invoices] == ["paid"] * 4
    # The card, as the emulator saw it: one PaymentIntent per invoice, of what was charged.
    for invoice, expected in zip(invoices, EXPECTED_INVOICES, strict=True):
        assert [i.amount for i in intents_for_invoice(stripe_client, invoice.id)] == [expected[5]]
    second_json = admin.get(f"/v1/invoices/{second.id}").get_json()
    assert (second_json["credit_notes_total"], second_json["amount_refunded"]) == (4_000, 2_000)
    intent = second_json["payment_attempts"][0]["payment_intent"]
    refunds = stripe_client.v1.refunds.list(params={"payment_intent": intent}).data
    assert [r.amount for r in refunds] == [2_000]

    balance = admin.get(f"/v1/customers/{customer['id']}/balance_transactions").get_json()
    assert [(t["type"], t["amount"], t["balance_after"]) for t in balance["data"]] == (
        EXPECTED_BALANCE
    )
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["balance"] == 0

    deliveries = db.session.scalars(select(EmailDelivery)).all()
    assert Counter(d.kind for d in deliveries) == EXPECTED_EMAILS
    assert {d.status for d in deliveries} == {"sent"}
    received = {m.message["Message-ID"] for m in mailbox.messages}
    assert {d.message_id for d in deliveries} <= received
    assert len(mailbox.messages) == sum(EXPECTED_EMAILS.values())

    types = Counter(
        db.session.scalars(select(Event.type).where(Event.customer_id == customer["id"])).all()
    )
    assert {t: types[t] for t in EXPECTED_EVENTS} == dict(EXPECTED_EVENTS)


def _invoices(subscription_id: str) -> list[Invoice]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Invoice)
            .join(SubscriptionPeriod, SubscriptionPeriod.invoice_id == Invoice.id)
            .where(SubscriptionPeriod.subscription_id == subscription_id)
            .order_by(SubscriptionPeriod.period_start)
        )
    )


def _period_start(invoice_id: str) -> datetime:
    return db.session.scalar(
        select(SubscriptionPeriod.period_start).where(SubscriptionPeriod.invoice_id == invoice_id)
    )
