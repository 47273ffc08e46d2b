"""Subscription trials against the real PostgreSQL, Stripe emulator and SMTP server, under a
moved clock: nothing invoiced or charged during a trial, the trial_will_end notice once,
the first paid period from the trial's end, cancellation during a trial, bad input."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import ChargeAttempt, EmailDelivery, Invoice, Subscription
from billing.platform import clock
from billing.subscriptions import subscriptions as service
from tests.conftest import intents_for_invoice

START = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
TRIAL_END = START + timedelta(days=14)  # 14 Feb 2026, 09:00


@pytest.fixture(autouse=True)
def frozen_clock():
    clock.set_now(START)
    yield
    clock.reset()


@pytest.fixture
def price(admin):
    body = {"product": "Team plan", "unit_amount": 1250, "currency": "eur", "interval": "month"}
    response = admin.post("/v1/prices", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def subscribe(admin):
    def make(customer, price, **fields):
        body = {"customer": customer["id"], "price": price["id"], **fields}
        response = admin.post("/v1/subscriptions", json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return make


def _ts(moment):
    return int(moment.timestamp())


def _count(model, *where):
    db.session.expire_all()
    count = db.session.scalar(select(func.count()).select_from(model).where(*where))
    db.session.commit()
    return count


def _events(admin, type_):
    response = admin.get("/v1/events", query_string={"limit": 100, "type": type_})
    return response.get_json()["data"]


def _trial_emails(mailbox):
    return [m for m in mailbox.messages if "trial" in m.message["Subject"]]


def test_a_14_day_trial_invoices_nothing_and_charges_nothing(
    admin, paying_customer, price, subscribe, run_jobs
):
    customer = paying_customer()
    subscription = subscribe(customer, price, quantity=3, trial_period_days=14)

    assert subscription["status"] == "trialing"
    assert (subscription["trial_start"], subscription["trial_end"]) == (_ts(START), _ts(TRIAL_END))
    assert subscription["current_period_start"] == _ts(START)
    assert subscription["current_period_end"] == _ts(TRIAL_END)
    assert subscription["billing_cycle_anchor"] == _ts(TRIAL_END)
    assert subscription["latest_invoice"] is None
    clock.set_now(TRIAL_END - timedelta(minutes=1))
    assert service.run_billing().invoices_created == 0
    run_jobs()
    assert _count(Invoice, Invoice.customer_id == customer["id"]) == 0
    assert _count(ChargeAttempt) == 0


def test_the_first_invoice_comes_at_the_trial_s_end_for_a_period_starting_there(
    admin, paying_customer, price, subscribe, run_jobs, stripe_client
):
    subscription = subscribe(paying_customer(), price, quantity=3, trial_period_days=14)

    clock.set_now(TRIAL_END + timedelta(minutes=30))
    assert service.run_billing().invoices_created == 1
    assert service.run_billing().invoices_created == 0

    active = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    assert active["status"] == "active"
    assert active["current_period_start"] == _ts(TRIAL_END)
    assert active["current_period_end"] == _ts(TRIAL_END.replace(month=3))
    invoice = admin.get(f"/v1/invoices/{active['latest_invoice']}").get_json()
    assert (invoice["total"], invoice["status"]) == (3750, "open")
    assert invoice["metadata"]["period_start"] == TRIAL_END.isoformat()
    [line] = invoice["lines"]["data"]
    assert "14 Feb 2026 to 14 Mar 2026" in line["description"]
    run_jobs()
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    assert [i.status for i in intents_for_invoice(stripe_client, invoice["id"])] == ["succeeded"]
    [created] = _events(admin, "subscription.created")
    assert created["data"]["object"]["status"] == "trialing"


def test_a_trial_may_end_at_a_given_time_which_anchors_the_billing_cycle(
    admin, make_customer, price, subscribe
):
    trial_end = START + timedelta(days=30, hours=3)
    subscription = subscribe(make_customer(), price, trial_end=_ts(trial_end))
    assert subscription["trial_end"] == subscription["billing_cycle_anchor"] == _ts(trial_end)
    assert subscription["status"] == "trialing"


def test_the_trial_will_end_email_and_event_go_out_three_days_before_once(
    admin, make_customer, price, subscribe, run_jobs, mailbox, celery_app
):
    customer = make_customer(
        locale="de_DE", email="ap@acme.example", billing_emails=["cfo@acme.example"]
    )
    subscription = subscribe(customer, price, quantity=3, trial_period_days=14)
    notify = celery_app.tasks["billing.notify_trials_ending"]

    clock.set_now(TRIAL_END - timedelta(days=3, minutes=1))
    assert notify.apply().get() == 0  # a minute early
    clock.set_now(TRIAL_END - timedelta(days=3) + timedelta(minutes=5))
    assert notify.apply().get() == 1
    assert notify.apply().get() == 0  # the next beat: told already
    run_jobs()
    clock.set_now(TRIAL_END - timedelta(days=1))
    assert notify.apply().get() == 0
    run_jobs()

    received = _trial_emails(mailbox)
    recipients = sorted(r for m in received for r in m.rcpt_tos)
    assert recipients == ["ap@acme.example", "cfo@acme.example"]
    message = received[0].message
    assert message["Subject"] == "Your trial of Team plan ends on 14. Februar 2026"
    text = message.get_body(("plain",)).get_content()
    assert "37,50\xa0€" in text and "3 x 12,50\xa0€" in text
    [event] = _events(admin, "subscription.trial_will_end")
    assert event["data"]["object"]["id"] == subscription["id"]
    [sent, _] = _events(admin, "email.sent")
    assert sent["data"]["object"]["subscription"] == subscription["id"]
    assert sent["data"]["object"]["invoice"] is None
    deliveries = db.session.scalars(select(EmailDelivery)).all()
    assert {(d.kind, d.status, d.invoice_id) for d in deliveries} == {
        ("trial_will_end", "sent", None)
    }
    assert db.session.get(Subscription, subscription["id"]).trial_will_end_notified_at is not None


def test_concurrent_notice_runs_tell_a_trial_once(
    app, admin, make_customer, price, subscribe, run_jobs, mailbox
):
    subscription = subscribe(make_customer(), price, trial_period_days=14)
    clock.set_now(TRIAL_END - timedelta(days=2))
    barrier = threading.Barrier(6)
    results = []

    def run():
        with app.app_context():
            barrier.wait()
            # Past the task's advisory lock: only the row lock and notified_at remain.
            results.append(service.notify_trials_ending())

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 1
    run_jobs()
    assert len(_trial_emails(mailbox)) == 1
    assert len(_events(admin, "subscription.trial_will_end")) == 1
    assert _count(EmailDelivery, EmailDelivery.subscription_id == subscription["id"]) == 1


def test_a_trial_shorter_than_the_notice_is_told_at_once(
    admin, make_customer, price, subscribe, celery_app
):
    subscribe(make_customer(), price, trial_period_days=2)
    assert celery_app.tasks["billing.notify_trials_ending"].apply().get() == 1


def test_canceling_during_a_trial_ends_it_with_no_invoice_and_no_charge(
    admin, paying_customer, price, subscribe, run_jobs, celery_app, mailbox
):
    customer = paying_customer()
    subscription = subscribe(customer, price, trial_period_days=14)
    clock.set_now(START + timedelta(days=5))

    response = admin.post(
        f"/v1/subscriptions/{subscription['id']}/cancel", json={"at_period_end": False}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "canceled"
    clock.set_now(TRIAL_END - timedelta(days=1))
    assert celery_app.tasks["billing.notify_trials_ending"].apply().get() == 0
    clock.set_now(TRIAL_END + timedelta(days=40))
    assert service.run_billing().invoices_created == 0
    run_jobs()
    assert _count(Invoice, Invoice.customer_id == customer["id"]) == 0
    assert _count(ChargeAttempt) == 0
    assert _trial_emails(mailbox) == []


def test_a_trial_canceled_at_its_end_ends_then_with_nothing_charged(
    admin, paying_customer, price, subscribe, run_jobs
):
    customer = paying_customer()
    subscription = subscribe(customer, price, trial_period_days=14)
    canceled = admin.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={}).get_json()
    assert (canceled["status"], canceled["cancel_at_period_end"]) == ("trialing", True)

    clock.set_now(TRIAL_END + timedelta(minutes=30))
    result = service.run_billing()
    assert (result.invoices_created, result.subscriptions_ended) == (0, 1)
    ended = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    assert (ended["status"], ended["ended_at"]) == ("canceled", _ts(TRIAL_END))
    run_jobs()
    assert _count(Invoice, Invoice.customer_id == customer["id"]) == 0
    assert _count(ChargeAttempt) == 0


def test_a_change_during_a_trial_is_not_prorated_and_the_first_invoice_bills_the_new_plan(
    admin, make_customer, price, subscribe
):
    subscription = subscribe(make_customer(), price, trial_period_days=14)
    changed = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"quantity": 4})
    assert changed.status_code == 200, changed.get_json()
    clock.set_now(TRIAL_END)
    assert service.run_billing().invoices_created == 1
    active = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    invoice = admin.get(f"/v1/invoices/{active['latest_invoice']}").get_json()
    assert [(line["quantity"], line["amount"]) for line in invoice["lines"]["data"]] == [(4, 5000)]


@pytest.mark.parametrize(
    ("trial", "code", "param"),
    [
        (
            {"trial_period_days": 14, "trial_end": _ts(START + timedelta(days=14))},
            "parameters_exclusive",
            "trial_end",
        ),
        ({"trial_end": _ts(START - timedelta(seconds=1))}, "trial_end_in_past", "trial_end"),
        ({"trial_end": _ts(START)}, "trial_end_in_past", "trial_end"),
        ({"trial_end": _ts(START + timedelta(days=731))}, "trial_too_long", "trial_end"),
        ({"trial_end": 2**40}, "parameter_invalid", "trial_end"),
        ({"trial_end": "tomorrow"}, "parameter_invalid", "trial_end"),
        ({"trial_period_days": 0}, "parameter_invalid", "trial_period_days"),
        ({"trial_period_days": -3}, "parameter_invalid", "trial_period_days"),
        ({"trial_period_days": 731}, "parameter_invalid", "trial_period_days"),
        ({"trial_period_days": "14"}, "parameter_invalid", "trial_period_days"),
        (
            {"trial_period_days": 14, "start_date": "2026-01-01"},
            "parameters_exclusive",
            "start_date",
        ),
    ],
)
def test_bad_trials_are_refused_with_400_and_a_stable_code_and_nothing_changes(
    admin, make_customer, price, trial, code, param
):
    body = {"customer": make_customer()["id"], "price": price["id"], **trial}
    response = admin.post("/v1/subscriptions", json=body)
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, code, param)
    assert _count(Subscription) == 0
    assert _count(Invoice) == 0


def test_beat_tells_ending_trials_every_hour(app):
    from workers.schedule import beat_schedule

    schedule = beat_schedule(app.config["BILLING_SETTINGS"])["trial-will-end"]
    assert (schedule["task"], schedule["schedule"]) == (
        "billing.notify_trials_ending",
        timedelta(hours=1),
    )
