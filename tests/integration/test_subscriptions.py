"""Prices and subscriptions against the real PostgreSQL and Stripe emulator: billing in
advance, the hourly billing run under a moved clock, proration, cancellation, isolation."""

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from billing.extensions import db
from billing.models import Invoice, Price, Subscription, SubscriptionPeriod
from billing.platform import clock
from billing.subscriptions import subscriptions as service


@pytest.fixture(autouse=True)
def frozen_clock():
    clock.set_now(datetime(2026, 1, 31, 9, 0, tzinfo=UTC))
    yield
    clock.reset()


@pytest.fixture
def make_price(admin):
    def make(unit_amount=1000, currency="eur", interval="month", product="Team plan"):
        body = {
            "product": product,
            "unit_amount": unit_amount,
            "currency": currency,
            "interval": interval,
        }
        response = admin.post("/v1/prices", json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return make


@pytest.fixture
def subscribe(admin):
    def make(customer, price, **fields):
        body = {"customer": customer["id"], "price": price["id"], **fields}
        response = admin.post("/v1/subscriptions", json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return make


def _invoices_of(subscription_id):
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Invoice)
            .join(SubscriptionPeriod, SubscriptionPeriod.invoice_id == Invoice.id)
            .where(SubscriptionPeriod.subscription_id == subscription_id)
            .order_by(SubscriptionPeriod.period_start)
        )
    )


def _ts(*args):
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_a_new_subscription_is_invoiced_for_its_first_period_at_once_and_paid_by_card(
    admin, paying_customer, make_price, subscribe, run_jobs
):
    customer = paying_customer()
    price = make_price(unit_amount=1250)
    subscription = subscribe(customer, price, quantity=3)

    assert subscription["status"] == "active"
    assert subscription["current_period_start"] == _ts(2026, 1, 31, 9)
    assert subscription["current_period_end"] == _ts(2026, 2, 28, 9)
    invoice = admin.get(f"/v1/invoices/{subscription['latest_invoice']}").get_json()
    assert (invoice["status"], invoice["total"]) == ("open", 3750)
    [line] = invoice["lines"]["data"]
    assert (line["quantity"], line["unit_amount"]) == (3, 1250)
    assert invoice["metadata"]["subscription"] == subscription["id"]
    run_jobs()
    paid = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (paid["status"], paid["amount_paid"]) == ("paid", 3750)


def test_a_send_invoice_subscription_gets_an_open_invoice_due_after_its_days(
    admin, make_customer, make_price, subscribe
):
    subscription = subscribe(
        make_customer(), make_price(), collection_method="send_invoice", days_until_due=14
    )
    invoice = admin.get(f"/v1/invoices/{subscription['latest_invoice']}").get_json()
    assert (invoice["status"], invoice["due_date"]) == ("open", "2026-02-14")
    assert invoice["payment_attempts"] == []


def test_the_hourly_run_after_the_period_ends_issues_exactly_one_invoice_for_the_next_period(
    admin, paying_customer, make_price, subscribe, run_jobs
):
    subscription = subscribe(paying_customer(), make_price(unit_amount=2000))
    clock.set_now(datetime(2026, 2, 28, 8, 59, tzinfo=UTC))
    assert service.run_billing().invoices_created == 0  # a minute early: nothing

    clock.set_now(datetime(2026, 2, 28, 9, 30, tzinfo=UTC))
    assert service.run_billing().invoices_created == 1
    assert service.run_billing().invoices_created == 0

    _, second = _invoices_of(subscription["id"])
    assert (second.total, second.status) == (2000, "open")
    moved = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    # Anchored on the 31st: February's short period, then back to the 31st in March.
    assert moved["current_period_start"] == _ts(2026, 2, 28, 9)
    assert moved["current_period_end"] == _ts(2026, 3, 31, 9)
    assert moved["latest_invoice"] == second.id
    run_jobs()
    assert admin.get(f"/v1/invoices/{second.id}").get_json()["status"] == "paid"


def test_runs_repeated_or_concurrent_invoice_each_period_once(
    app, make_customer, make_price, subscribe
):
    customer, price = make_customer(), make_price()
    subscription_ids = [subscribe(customer, price)["id"] for _ in range(5)]
    clock.set_now(datetime(2026, 3, 1, tzinfo=UTC))
    barrier = threading.Barrier(6)
    results = []

    def run(locked):
        with app.app_context():
            barrier.wait()
            if locked:
                results.append(service.run_billing().invoices_created)
            else:  # past the advisory lock: only the row lock and the period key remain
                results.append(service.bill_due_subscriptions(batch_size=2).invoices_created)

    threads = [threading.Thread(target=run, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 5
    assert service.run_billing().invoices_created == 0
    for subscription_id in subscription_ids:
        assert len(_invoices_of(subscription_id)) == 2


def test_the_database_refuses_a_second_invoice_for_the_same_period(
    make_customer, make_price, subscribe, open_invoice
):
    customer = make_customer()
    subscription = subscribe(customer, make_price())
    other = open_invoice(customer)
    db.session.add(
        SubscriptionPeriod(
            subscription_id=subscription["id"],
            period_start=datetime(2026, 1, 31, 9, tzinfo=UTC),
            period_end=datetime(2026, 2, 28, 9, tzinfo=UTC),
            period_index=7,
            invoice_id=other["id"],
        )
    )
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_a_subscription_that_missed_three_periods_catches_up_in_one_run(
    admin, make_customer, make_price, subscribe
):
    clock.set_now(datetime(2026, 1, 15, 12, tzinfo=UTC))
    subscription = subscribe(make_customer(), make_price(unit_amount=700))
    clock.set_now(datetime(2026, 4, 20, tzinfo=UTC))  # the service was down since January

    assert service.run_billing().invoices_created == 3
    assert service.run_billing().invoices_created == 0
    periods = db.session.scalars(
        select(SubscriptionPeriod.period_start)
        .where(SubscriptionPeriod.subscription_id == subscription["id"])
        .order_by(SubscriptionPeriod.period_start)
    ).all()
    assert [p.date().isoformat() for p in periods] == [
        "2026-01-15",
        "2026-02-15",
        "2026-03-15",
        "2026-04-15",
    ]
    current = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    assert current["current_period_end"] == _ts(2026, 5, 15, 12)


def test_a_subscription_canceled_at_period_end_gets_no_further_invoice_and_ends_with_it(
    admin, make_customer, make_price, subscribe
):
    subscription = subscribe(make_customer(), make_price())
    canceled = admin.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={})
    assert canceled.status_code == 200
    assert (canceled.get_json()["status"], canceled.get_json()["cancel_at_period_end"]) == (
        "active",
        True,
    )
    clock.set_now(datetime(2026, 3, 1, tzinfo=UTC))
    result = service.run_billing()
    assert (result.invoices_created, result.subscriptions_ended) == (0, 1)
    ended = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    assert (ended["status"], ended["ended_at"]) == ("canceled", _ts(2026, 2, 28, 9))
    assert len(_invoices_of(subscription["id"])) == 1
    clock.set_now(datetime(2026, 6, 1, tzinfo=UTC))
    assert service.run_billing().invoices_created == 0


def test_a_subscription_canceled_now_ends_at_once_and_is_never_invoiced_again(
    admin, make_customer, make_price, subscribe
):
    subscription = subscribe(make_customer(), make_price())
    clock.set_now(datetime(2026, 2, 10, tzinfo=UTC))
    response = admin.post(
        f"/v1/subscriptions/{subscription['id']}/cancel", json={"at_period_end": False}
    )
    assert response.status_code == 200
    assert (response.get_json()["status"], response.get_json()["ended_at"]) == (
        "canceled",
        _ts(2026, 2, 10),
    )
    again = admin.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={})
    assert (again.status_code, again.get_json()["error"]["code"]) == (
        409,
        "subscription_not_active",
    )
    clock.set_now(datetime(2026, 3, 1, tzinfo=UTC))
    assert service.run_billing().invoices_created == 0


def test_a_quantity_change_mid_period_puts_the_prorated_credit_and_charge_on_the_next_invoice(
    admin, paying_customer, make_price, subscribe, run_jobs
):
    clock.set_now(datetime(2026, 4, 1, tzinfo=UTC))  # a 30-day period: April
    subscription = subscribe(paying_customer(), make_price(unit_amount=999), quantity=3)
    clock.set_now(datetime(2026, 4, 12, 15, tzinfo=UTC))  # 19 of 30 days remain

    changed = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"quantity": 7})
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["quantity"] == 7
    assert len(_invoices_of(subscription["id"])) == 1  # nothing invoiced yet

    clock.set_now(datetime(2026, 5, 1, 0, 30, tzinfo=UTC))
    assert service.run_billing().invoices_created == 1
    nxt = _invoices_of(subscription["id"])[-1]
    lines = admin.get(f"/v1/invoices/{nxt.id}").get_json()["lines"]["data"]
    assert [(ln["quantity"], ln["amount"]) for ln in lines] == [
        (7, 6993),  # May, in advance, at the new quantity
        (1, -1898),  # 2997 x 19/30 = 1898.1 -> 1898: the three seats' unused days
        (1, 4429),  # 6993 x 19/30 = 4428.9 -> 4429: the seven seats' remaining days
    ]
    assert nxt.total == 6993 - 1898 + 4429
    run_jobs()
    assert admin.get(f"/v1/invoices/{nxt.id}").get_json()["status"] == "paid"
    # Adjustments are billed once: June's invoice is the plain period.
    clock.set_now(datetime(2026, 6, 1, 0, 30, tzinfo=UTC))
    service.run_billing()
    assert _invoices_of(subscription["id"])[-1].total == 6993


def test_a_downgrade_credit_larger_than_the_next_period_is_carried_forward_never_negative(
    admin, make_customer, make_price, subscribe
):
    clock.set_now(datetime(2026, 4, 1, tzinfo=UTC))
    subscription = subscribe(make_customer(), make_price(unit_amount=1000), quantity=10)
    clock.set_now(datetime(2026, 4, 2, tzinfo=UTC))  # 29 of 30 days remain
    admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"quantity": 1})
    clock.set_now(datetime(2026, 5, 1, 1, tzinfo=UTC))
    service.run_billing()
    may = _invoices_of(subscription["id"])[-1]
    # 1000 + (-9667 + 967) = -7700: the invoice comes to zero, 7700 waits for June.
    assert (may.total, may.status) == (0, "paid")
    clock.set_now(datetime(2026, 6, 1, 1, tzinfo=UTC))
    service.run_billing()
    june = _invoices_of(subscription["id"])[-1]
    assert june.total == 0  # 1000 - 7700 still leaves 6700 of credit for July


def test_a_price_change_keeps_currency_and_interval_and_is_refused_otherwise(
    admin, make_customer, make_price, subscribe
):
    subscription = subscribe(make_customer(), make_price())
    yearly = make_price(interval="year")
    response = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"price": yearly["id"]})
    assert (response.status_code, response.get_json()["error"]["param"]) == (422, "price")
    assert (
        admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()["price"]["id"]
        == (subscription["price"]["id"])
    )
    dearer = make_price(unit_amount=3000, product="Business plan")
    moved = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"price": dearer["id"]})
    assert moved.get_json()["price"]["product"] == "Business plan"


def test_customer_keys_see_only_their_own_subscriptions_and_cannot_change_them(
    make_customer, make_price, subscribe, customer_api
):
    price = make_price()
    mine, theirs = make_customer(), make_customer(name="Other AG")
    own = subscribe(mine, price)
    other = subscribe(theirs, price)
    api = customer_api(mine["id"])

    assert api.get(f"/v1/subscriptions/{own['id']}").status_code == 200
    assert api.get(f"/v1/subscriptions/{other['id']}").status_code == 404
    listed = api.get("/v1/subscriptions").get_json()["data"]
    assert [s["id"] for s in listed] == [own["id"]]
    assert api.get(f"/v1/prices/{price['id']}").status_code == 200
    assert api.post("/v1/subscriptions", json={"customer": mine["id"], "price": price["id"]}) \
        .status_code == 403  # fmt: skip
    assert api.patch(f"/v1/subscriptions/{own['id']}", json={"quantity": 9}).status_code == 403
    assert api.post(f"/v1/subscriptions/{other['id']}/cancel", json={}).status_code == 403


def test_prices_list_newest_first_with_cursor_pagination(admin, make_price):
    ids = [make_price(unit_amount=n)["id"] for n in (100, 200, 300)]
    page = admin.get("/v1/prices?limit=2").get_json()
    assert ([p["id"] for p in page["data"]], page["has_more"]) == ([ids[2], ids[1]], True)
    rest = admin.get(f"/v1/prices?limit=2&starting_after={ids[1]}").get_json()
    assert ([p["id"] for p in rest["data"]], rest["has_more"]) == ([ids[0]], False)


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"price": "prc_missing"}, 404, "resource_missing", "price"),
        ({"quantity": 0}, 400, "parameter_invalid", "quantity"),
        ({"quantity": "2"}, 400, "parameter_invalid", "quantity"),
        ({"days_until_due": 10}, 422, "invalid_request", "days_until_due"),
        ({"start_date": "2026-02-01"}, 422, "invalid_request", "start_date"),
        ({"collection_method": "barter"}, 400, "parameter_invalid", "collection_method"),
        ({"trial": True}, 400, "parameter_unknown", "trial"),
        ({"currency_price": "usd"}, 400, "parameter_unknown", "currency_price"),
    ],
)
def test_bad_subscriptions_are_refused_with_a_stable_code_and_nothing_changes(
    admin, make_customer, make_price, change, status, code, param
):
    body = {"customer": make_customer()["id"], "price": make_price()["id"], **change}
    response = admin.post("/v1/subscriptions", json=body)
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (status, code, param)
    assert db.session.scalar(select(func.count()).select_from(Subscription)) == 0
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0


def test_a_price_in_another_currency_than_the_customers_is_refused(
    admin, make_customer, make_price
):
    body = {"customer": make_customer()["id"], "price": make_price(currency="usd")["id"]}
    response = admin.post("/v1/subscriptions", json=body)
    assert (response.status_code, response.get_json()["error"]["param"]) == (422, "price")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"product": "X", "unit_amount": 100, "currency": "eur", "interval": "week"}, "interval"),
        (
            {"product": "X", "unit_amount": -1, "currency": "eur", "interval": "month"},
            "unit_amount",
        ),
        ({"product": "X", "unit_amount": 100, "currency": "xyz", "interval": "month"}, "currency"),
        ({"product": "", "unit_amount": 100, "currency": "eur", "interval": "month"}, "product"),
        ({"unit_amount": 100, "currency": "eur", "interval": "month"}, "product"),
    ],
)
def test_bad_prices_are_refused(admin, body, param):
    response = admin.post("/v1/prices", json=body)
    assert (response.status_code, response.get_json()["error"]["param"]) == (400, param)
    assert db.session.scalar(select(func.count()).select_from(Price)) == 0


def test_one_failing_subscription_does_not_stop_the_run_and_is_billed_by_the_next(
    make_customer, make_price, subscribe
):
    customer = make_customer()
    broken = subscribe(customer, make_price(product="Broken"))
    healthy = subscribe(customer, make_price(product="Healthy"))
    # A price changed behind the service's back to more than any invoice may carry.
    db.session.execute(
        update(Price).where(Price.id == broken["price"]["id"]).values(unit_amount=10**13)
    )
    db.session.commit()
    clock.set_now(datetime(2026, 3, 1, tzinfo=UTC))
    result = service.run_billing()
    assert (result.invoices_created, result.failures) == (1, 1)
    assert len(_invoices_of(healthy["id"])) == 2
    assert len(_invoices_of(broken["id"])) == 1

    db.session.execute(
        update(Price).where(Price.id == broken["price"]["id"]).values(unit_amount=1000)
    )
    db.session.commit()
    assert service.run_billing().invoices_created == 1
    assert len(_invoices_of(broken["id"])) == 2


def test_the_billing_run_is_a_billing_queue_task_scheduled_hourly(celery_app, app):
    from workers.schedule import beat_schedule

    schedule = beat_schedule(app.config["BILLING_SETTINGS"])["billing-run"]
    assert (schedule["task"], schedule["schedule"]) == ("billing.run_billing", timedelta(hours=1))
    assert celery_app.tasks["billing.run_billing"].apply().get() == 0


@pytest.mark.parametrize("collection_method", ["charge_automatically", "send_invoice"])
def test_the_run_invoices_a_period_with_its_proration_and_moves_the_subscription_on(
    admin, paying_customer, make_price, subscribe, collection_method
):
    from billing.models import OutboxJob

    customer = paying_customer()
    price = make_price(unit_amount=1500)
    extra = {"days_until_due": 14} if collection_method == "send_invoice" else {}
    subscription = subscribe(
        customer, price, quantity=3, collection_method=collection_method, **extra
    )
    clock.set_now(datetime(2026, 2, 10, tzinfo=UTC))
    changed = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"quantity": 5})
    assert changed.status_code == 200, changed.get_json()

    now = datetime(2026, 3, 1, tzinfo=UTC)
    clock.set_now(now)
    assert service.run_billing().invoices_created == 1

    first, invoiced = _invoices_of(subscription["id"])
    assert invoiced.status == "open" and invoiced.finalized_at == now
    assert int(invoiced.number.rsplit("-", 1)[1]) == int(first.number.rsplit("-", 1)[1]) + 1
    assert len(invoiced.lines) == 3  # the period, then the prorated credit and charge
    assert invoiced.total == sum(line.amount for line in invoiced.lines) > 0
    if collection_method == "send_invoice":
        assert invoiced.due_date == date(2026, 3, 15) and not invoiced.charge_attempts
    else:
        assert invoiced.due_date is None
        assert [(a.status, a.amount, a.source) for a in invoiced.charge_attempts] == [
            ("pending", invoiced.total, "automatic")
        ]
    jobs = db.session.scalars(
        select(OutboxJob.name).where(OutboxJob.args["invoice_id"].astext == invoiced.id)
    ).all()
    assert jobs == ["pdf.render_invoice"]
    moved = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    assert moved["latest_invoice"] == invoiced.id
    assert moved["current_period_start"] == _ts(2026, 2, 28, 9)


def test_an_upgrade_in_the_last_period_is_invoiced_when_the_subscription_ends(
    admin, paying_customer, make_price, subscribe, run_jobs
):
    subscription = subscribe(paying_customer(), make_price(unit_amount=1000), quantity=2)
    clock.set_now(datetime(2026, 2, 10, tzinfo=UTC))
    changed = admin.patch(f"/v1/subscriptions/{subscription['id']}", json={"quantity": 4})
    canceled = admin.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={})
    assert (changed.status_code, canceled.status_code) == (200, 200)

    clock.set_now(datetime(2026, 3, 1, tzinfo=UTC))
    result = service.run_billing()
    assert (result.invoices_created, result.subscriptions_ended) == (0, 1)
    ended = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()
    assert ended["status"] == "canceled"
    final = admin.get(f"/v1/invoices/{ended['latest_invoice']}").get_json()
    amounts = [line["amount"] for line in final["lines"]["data"]]
    assert len(amounts) == 2 and amounts[0] < 0 < amounts[1]  # credit, then charge
    assert final["total"] == sum(amounts) > 0
    assert final["status"] == "open" and final["metadata"]["final"] == "true"
    run_jobs()
    assert admin.get(f"/v1/invoices/{final['id']}").get_json()["status"] == "paid"
    assert service.run_billing().invoices_created == 0
