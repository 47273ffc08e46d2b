"""Dunning through forty days of a moved clock, the nightly job run in-process through its
real Celery task, checked against the emulator's PaymentIntents and the SMTP server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from babel.dates import format_date
from sqlalchemy import func, select, update

from billing.dunning import dunning
from billing.extensions import db
from billing.models import ChargeAttempt, DunningStepRecord, EmailDelivery, Invoice, LedgerEntry
from billing.platform import clock
from tests.conftest import CARD_DECLINED_AFTER_ATTACH, CARD_OK, intents_for_invoice


@pytest.fixture
def moved_clock():
    clock.set_now(datetime.now(UTC).replace(microsecond=0))
    yield clock
    clock.reset()


@pytest.fixture
def nightly(celery_app, run_jobs):
    def run() -> None:
        celery_app.tasks["billing.run_dunning"].apply()
        run_jobs()

    return run


def _subjects(mailbox, part: str) -> list[Any]:
    return [m.message for m in mailbox.messages if part in m.message["Subject"]]


def _text(message: Any) -> str:
    return str(message.get_body(preferencelist=("plain",)).get_content())


def _long(day) -> str:
    return str(format_date(day, format="long", locale="en_US"))


def _new_card(admin, stripe_client, customer_id: str, card: str = CARD_OK) -> None:
    pm = stripe_client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    response = admin.post(
        f"/v1/customers/{customer_id}/payment_method", json={"payment_method": pm.id}
    )
    assert response.status_code == 200, response.get_json()


def test_a_failing_card_is_retried_reminded_and_given_up_then_paying_clears_the_flag(
    app,
    moved_clock,
    nightly,
    admin,
    paying_customer,
    open_invoice,
    run_jobs,
    stripe_client,
    mailbox,
):
    start = clock.today()
    customer = paying_customer(card=CARD_DECLINED_AFTER_ATTACH)
    invoice = open_invoice(customer)
    run_jobs()  # the automatic charge at finalization fails
    preview = admin.get(f"/v1/invoices/{invoice['id']}/dunning").get_json()
    assert [(s["action"], s["date"], s["status"]) for s in preview["steps"]] == [
        ("retry_charge", str(start + timedelta(days=3)), "planned"),
        ("retry_charge", str(start + timedelta(days=5)), "planned"),
        ("retry_charge", str(start + timedelta(days=7)), "planned"),
        ("mark_uncollectible", str(start + timedelta(days=8)), "planned"),
        ("final_notice", str(start + timedelta(days=8)), "planned"),
    ]
    # The invoice names its next attempt: the first retry, at the nightly run's hour.
    shown = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["next_payment_attempt"]
    first_retry = datetime.combine(start + timedelta(days=3), datetime.min.time(), UTC)
    assert shown == int(
        (first_retry + timedelta(hours=app.config["BILLING_SETTINGS"].dunning_hour)).timestamp()
    )

    for _ in range(40):
        clock.advance(timedelta(days=1))
        nightly()

    # One first charge and three retries, counted on the emulator.
    intents = intents_for_invoice(stripe_client, invoice["id"])
    assert len(intents) == 4
    assert all(i.status != "succeeded" for i in intents)
    # One payment-failed email per failed attempt, each naming the next retry.
    failed = _subjects(mailbox, "failed")
    assert len(failed) == 4
    promised = [
        d
        for d in (3, 5, 7)
        if f"try again on {_long(start + timedelta(days=d))}" in "\n".join(_text(m) for m in failed)
    ]
    assert promised == [3, 5, 7]
    assert sum("try again" in _text(m) for m in failed) == 3
    assert len(_subjects(mailbox, "Final notice")) == 1

    stored = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert stored["status"] == "uncollectible"
    assert stored["next_payment_attempt"] is None
    assert [a["source"] for a in stored["payment_attempts"]] == ["automatic"] + ["dunning"] * 3
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["delinquent"] is True
    preview = admin.get(f"/v1/invoices/{invoice['id']}/dunning").get_json()
    assert {s["status"] for s in preview["steps"]} == {"done"}

    # A new card, a payment: paid, and the flag cleared.
    _new_card(admin, stripe_client, customer["id"])
    assert admin.post(f"/v1/invoices/{invoice['id']}/pay").status_code == 202
    run_jobs()
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["delinquent"] is False
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 5


def test_a_sent_invoice_is_reminded_before_on_and_after_its_due_date(
    moved_clock, nightly, admin, make_customer, open_invoice, run_jobs, mailbox
):
    customer = make_customer()
    invoice = open_invoice(customer, collection_method="send_invoice", days_until_due=10)
    run_jobs()
    due = datetime.fromisoformat(invoice["due_date"]).date()
    sent: list[tuple[str, Any]] = []
    for _ in range(25):
        clock.advance(timedelta(days=1))
        before = len(mailbox.messages)
        nightly()
        for received in mailbox.messages[before:]:
            sent.append((str(received.message["Subject"]), clock.today()))
        assert _plan_from_loaded(invoice["id"]) == dunning.preview(invoice["id"])
    assert [(day - due).days for subject, day in sent if "Invoice" in subject] == [-3, 0, 3, 7]
    assert [(day - due).days for subject, day in sent if "Final notice" in subject] == [8]
    assert len(_subjects(mailbox, "is due on")) == 1
    assert len(_subjects(mailbox, "is due today")) == 1
    assert len(_subjects(mailbox, "is overdue")) == 2
    assert len(_subjects(mailbox, "Final notice")) == 1
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "uncollectible"
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["delinquent"] is True


def test_a_hard_decline_waits_for_a_new_card_which_is_charged_at_once(
    moved_clock, nightly, admin, paying_customer, open_invoice, run_jobs, stripe_client, mailbox
):
    customer = paying_customer(card=CARD_DECLINED_AFTER_ATTACH)
    invoice = open_invoice(customer)
    run_jobs()
    # The emulator declines only with card_declined: the bank's answer is made an expired
    # card here, as Stripe would give it.
    db.session.execute(
        update(ChargeAttempt)
        .where(ChargeAttempt.invoice_id == invoice["id"])
        .values(decline_code="expired_card")
    )
    db.session.commit()
    for _ in range(4):
        clock.advance(timedelta(days=1))
        nightly()
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 1
    preview = admin.get(f"/v1/invoices/{invoice['id']}/dunning").get_json()
    assert preview["steps"][0]["status"] == "skipped"
    assert "hard decline" in preview["steps"][0]["reason"]

    # The hosted page's plan, from the attempts it loaded, is the nightly run's own.
    assert _plan_from_loaded(invoice["id"]) == dunning.preview(invoice["id"])

    _new_card(admin, stripe_client, customer["id"])
    run_jobs()
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 2


def _plan_from_loaded(invoice_id: str) -> list[Any]:
    db.session.expire_all()
    invoice = db.session.get(Invoice, invoice_id)
    assert invoice is not None
    attempts = sorted(invoice.charge_attempts, key=lambda a: (a.created_at, a.id), reverse=True)
    return dunning.plan_of(invoice, attempts)


def test_two_runs_at_once_and_again_take_every_step_once(
    app, moved_clock, admin, make_customer, open_invoice, run_jobs, mailbox
):
    from billing.dunning import dunning

    customer = make_customer()
    invoices = [
        open_invoice(customer, collection_method="send_invoice", days_until_due=10)
        for _ in range(6)
    ]
    run_jobs()
    clock.advance(timedelta(days=10))  # the due date: reminder:+0 taken, reminder:-3 skipped
    errors: list[BaseException] = []

    def run(locked: bool) -> None:
        try:
            with app.app_context():
                if locked:
                    dunning.run_dunning(page_size=2)
                else:
                    dunning.run_pages(clock.today(), page_size=2)
                db.session.remove()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    for locked in (False, True, False):
        threads = [threading.Thread(target=run, args=(locked,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    count = db.session.scalar(select(func.count()).select_from(DunningStepRecord))
    assert count == 2 * len(invoices)
    entries = db.session.scalar(select(func.count()).where(LedgerEntry.scope == "dunning.step"))
    assert entries == 2 * len(invoices)
    reminders = db.session.scalar(
        select(func.count()).where(EmailDelivery.kind == "payment_reminder")
    )
    assert reminders == len(invoices)
    run_jobs()
    assert len(_subjects(mailbox, "is due today")) == len(invoices)


def test_the_dunning_preview_is_hidden_from_other_customers(
    admin, make_customer, open_invoice, customer_api
):
    mine = make_customer()
    other = make_customer(name="Globex")
    invoice = open_invoice(mine, collection_method="send_invoice", days_until_due=30)
    assert customer_api(other["id"]).get(f"/v1/invoices/{invoice['id']}/dunning").status_code == 404
    answer = customer_api(mine["id"]).get(f"/v1/invoices/{invoice['id']}/dunning")
    assert answer.status_code == 200
    assert [s["action"] for s in answer.get_json()["steps"]][-2:] == [
        "mark_uncollectible",
        "final_notice",
    ]
