"""Coupons, promotion codes and discounts against the real PostgreSQL: what invoices take
off, when a subscription's discount ends, redemption limits under races, bad input."""

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import Coupon, Discount, Invoice, InvoiceDiscount, PromotionCode
from billing.platform import clock
from billing.subscriptions import subscriptions as subscription_service
from tests.conftest import Api


@pytest.fixture(autouse=True)
def frozen_clock():
    clock.set_now(datetime(2026, 1, 31, 9, 0, tzinfo=UTC))
    yield
    clock.reset()


def _ok(response):
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _error(response, status, code):
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


@pytest.fixture
def make_coupon(admin):
    def make(**fields):
        body = {"name": "Spring sale", "percent_off": 20, **fields}
        return _ok(admin.post("/v1/coupons", json=body))

    return make


@pytest.fixture
def make_code(admin):
    def make(coupon, code="SPRING", **fields):
        return _ok(
            admin.post("/v1/promotion_codes", json={"code": code, "coupon": coupon["id"], **fields})
        )

    return make


def _invoice(admin, customer, lines, **fields):
    body = {"customer": customer["id"], "lines": lines, **fields}
    return _ok(admin.post("/v1/invoices", json=body))


def _line(unit_amount, tax_rate=0, quantity=1):
    return {
        "description": "Consulting",
        "quantity": quantity,
        "unit_amount": unit_amount,
        "tax_rate": tax_rate,
    }


def _adds_up(invoice):
    lines = invoice["lines"]["data"]
    assert invoice["total"] == invoice["subtotal"] - invoice["discount"] + invoice["tax"]
    assert sum(line["discount_amount"] for line in lines) == invoice["discount"]
    assert sum(d["amount"] for d in invoice["discounts"]) == invoice["discount"]
    assert sum(line["tax"] for line in lines) == invoice["tax"]


def test_a_percent_coupon_on_a_one_off_invoice_shows_its_discount_line_and_taxes_the_rest(
    admin, make_customer, make_coupon
):
    coupon = make_coupon(percent_off=20)
    invoice = _invoice(
        admin,
        make_customer(),
        [_line(10_000, tax_rate=19), _line(5_000, tax_rate=7)],
        discounts=[{"coupon": coupon["id"]}],
    )
    assert (invoice["subtotal"], invoice["discount"]) == (15_000, 3_000)
    [line_19, line_7] = invoice["lines"]["data"]
    assert (line_19["discount_amount"], line_19["tax"]) == (2_000, 1_520)
    assert (line_7["discount_amount"], line_7["tax"]) == (1_000, 280)
    assert invoice["total"] == 15_000 - 3_000 + 1_800
    [shown] = invoice["discounts"]
    assert (shown["coupon"], shown["description"], shown["amount"]) == (
        coupon["id"],
        "Spring sale (20% off)",
        3_000,
    )
    _adds_up(invoice)
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json() == invoice
    taxes = {t["tax_rate"]: t["taxable_amount"] for t in invoice["total_tax_amounts"]}
    assert taxes == {"19": 8_000, "7": 4_000}


def test_an_amount_coupon_takes_at_most_the_invoice_and_a_draft_reshares_it_as_lines_change(
    admin, make_customer, make_coupon
):
    coupon = make_coupon(percent_off=None, amount_off=5_000, currency="eur", name="Welcome")
    invoice = _invoice(admin, make_customer(), [_line(3_000)], discounts=[{"coupon": coupon["id"]}])
    assert (invoice["discount"], invoice["total"]) == (3_000, 0)
    assert invoice["discounts"][0]["description"] == "Welcome (50.00 EUR off)"

    grown = _ok(admin.post(f"/v1/invoices/{invoice['id']}/lines", json=_line(7_000, tax_rate=19)))
    assert (grown["subtotal"], grown["discount"]) == (10_000, 5_000)
    assert [line["discount_amount"] for line in grown["lines"]["data"]] == [1_500, 3_500]
    _adds_up(grown)

    first_line = grown["lines"]["data"][0]["id"]
    shrunk = _ok(admin.delete(f"/v1/invoices/{invoice['id']}/lines/{first_line}"))
    assert (shrunk["discount"], shrunk["tax"], shrunk["total"]) == (5_000, 380, 2_380)
    _adds_up(shrunk)
    assert db.session.scalar(select(func.count()).select_from(InvoiceDiscount)) == 1


def test_a_customers_discount_applies_to_its_one_off_invoices_after_the_invoices_own(
    admin, make_customer, make_coupon
):
    customer = make_customer()
    forever = make_coupon(duration="forever", percent_off=10, name="Partner")
    _ok(admin.post(f"/v1/customers/{customer['id']}/discounts", json={"coupon": forever["id"]}))
    own = make_coupon(percent_off=None, amount_off=1_000, currency="eur", name="Sorry")
    invoice = _invoice(admin, customer, [_line(10_000)], discounts=[{"coupon": own["id"]}])
    # Oldest first: 10% of 100.00, then 10.00 off what is left.
    assert [d["amount"] for d in invoice["discounts"]] == [1_000, 1_000]
    assert invoice["total"] == 8_000


def test_a_repeating_three_month_subscription_discount_stops_on_the_fourth_period(
    admin, make_customer, make_coupon
):
    coupon = make_coupon(duration="repeating", duration_in_months=3, percent_off=25)
    price = _ok(
        admin.post(
            "/v1/prices",
            json={
                "product": "Team plan",
                "unit_amount": 2_000,
                "currency": "eur",
                "interval": "month",
            },
        )
    )
    subscription = _ok(
        admin.post(
            "/v1/subscriptions",
            json={"customer": make_customer()["id"], "price": price["id"], "coupon": coupon["id"]},
        )
    )
    totals = [admin.get(f"/v1/invoices/{subscription['latest_invoice']}").get_json()["total"]]
    for moment in [(2026, 2, 28, 10), (2026, 3, 31, 10), (2026, 4, 30, 10), (2026, 5, 31, 10)]:
        clock.set_now(datetime(*moment, tzinfo=UTC))
        assert subscription_service.run_billing().invoices_created == 1
        latest = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()["latest_invoice"]
        invoice = admin.get(f"/v1/invoices/{latest}").get_json()
        _adds_up(invoice)
        totals.append(invoice["total"])
    # Periods starting Jan 31, Feb 28 and Mar 31 are within three months; Apr 30 is not.
    assert totals == [1_500, 1_500, 1_500, 2_000, 2_000]


def test_a_subscriptions_own_discount_replaces_the_customers(admin, make_customer, make_coupon):
    customer = make_customer()
    _ok(
        admin.post(
            f"/v1/customers/{customer['id']}/discounts",
            json={"coupon": make_coupon(duration="forever", percent_off=50)["id"]},
        )
    )
    price = _ok(
        admin.post(
            "/v1/prices",
            json={
                "product": "Team plan",
                "unit_amount": 1_000,
                "currency": "eur",
                "interval": "month",
            },
        )
    )
    subscription = _ok(
        admin.post("/v1/subscriptions", json={"customer": customer["id"], "price": price["id"]})
    )
    first = admin.get(f"/v1/invoices/{subscription['latest_invoice']}").get_json()
    assert first["total"] == 500  # the customer's 50%, the subscription having none
    _ok(
        admin.post(
            f"/v1/subscriptions/{subscription['id']}/discounts",
            json={"coupon": make_coupon(duration="forever", percent_off=10)["id"]},
        )
    )
    clock.set_now(datetime(2026, 2, 28, 10, tzinfo=UTC))
    subscription_service.run_billing()
    latest = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()["latest_invoice"]
    assert admin.get(f"/v1/invoices/{latest}").get_json()["total"] == 900


def test_a_once_discount_goes_on_exactly_one_of_two_invoices_made_at_the_same_time(
    app, admin, make_customer, make_coupon
):
    customer = make_customer()
    coupon = make_coupon(duration="once", percent_off=50)
    discount = _ok(
        admin.post(f"/v1/customers/{customer['id']}/discounts", json={"coupon": coupon["id"]})
    )
    barrier = threading.Barrier(2)
    made = []

    def create():
        api = Api(app.test_client(), admin.secret)
        barrier.wait()
        made.append(
            api.post("/v1/invoices", json={"customer": customer["id"], "lines": [_line(1_000)]})
        )

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = sorted(_ok(response)["total"] for response in made)
    assert totals == [500, 1_000]
    db.session.expire_all()
    assert db.session.get(Discount, discount["id"]).ended_at is not None
    later = _invoice(admin, customer, [_line(1_000)])
    assert (later["total"], later["discounts"]) == (1_000, [])


def test_a_promotion_code_is_redeemed_within_its_own_limits(
    admin, make_customer, make_coupon, make_code
):
    coupon = make_coupon(duration="forever")
    code = make_code(coupon, code="Spring26", max_redemptions=1)
    # Codes are one whatever their case, and found by what customers type.
    found = admin.get("/v1/promotion_codes?code=SPRING26").get_json()["data"]
    assert [c["id"] for c in found] == [code["id"]]
    _error(
        admin.post("/v1/promotion_codes", json={"code": "spring26", "coupon": coupon["id"]}),
        409,
        "promotion_code_exists",
    )
    first, second = make_customer(), make_customer()
    discount = _ok(
        admin.post(f"/v1/customers/{first['id']}/discounts", json={"promotion_code": code["id"]})
    )
    assert (discount["promotion_code"], discount["coupon"]["id"]) == (code["id"], coupon["id"])
    _error(
        admin.post(f"/v1/customers/{second['id']}/discounts", json={"promotion_code": code["id"]}),
        422,
        "promotion_code_max_redemptions",
    )
    shown = admin.get(f"/v1/promotion_codes/{code['id']}").get_json()
    assert (shown["times_redeemed"], shown["coupon"]["times_redeemed"]) == (1, 1)


def test_concurrent_redemptions_never_pass_a_coupons_limit(app, admin, make_customer, make_coupon):
    coupon = make_coupon(max_redemptions=3)
    customers = [make_customer() for _ in range(8)]
    barrier = threading.Barrier(len(customers))
    statuses = []

    def redeem(customer):
        api = Api(app.test_client(), admin.secret)
        barrier.wait()
        response = api.post(
            f"/v1/customers/{customer['id']}/discounts", json={"coupon": coupon["id"]}
        )
        statuses.append(
            (response.status_code, (response.get_json().get("error") or {}).get("code"))
        )

    threads = [threading.Thread(target=redeem, args=(c,)) for c in customers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses, key=str).count((200, None)) == 3
    assert {s for s in statuses if s[0] != 200} == {(422, "coupon_max_redemptions")}
    db.session.expire_all()
    assert db.session.get(Coupon, coupon["id"]).times_redeemed == 3
    assert db.session.scalar(select(func.count()).select_from(Discount)) == 3


def test_a_removed_discount_no_longer_applies_and_events_record_each_change(
    admin, make_customer, make_coupon
):
    customer = make_customer()
    coupon = make_coupon(duration="forever")
    discount = _ok(
        admin.post(f"/v1/customers/{customer['id']}/discounts", json={"coupon": coupon["id"]})
    )
    listed = admin.get(f"/v1/customers/{customer['id']}/discounts").get_json()["data"]
    assert [d["id"] for d in listed] == [discount["id"]]
    removed = _ok(admin.delete(f"/v1/customers/{customer['id']}/discounts/{discount['id']}"))
    assert removed["ended_at"] is not None
    assert _invoice(admin, customer, [_line(1_000)])["discount"] == 0
    types = [e["type"] for e in admin.get("/v1/events?limit=100").get_json()["data"]]
    assert {"coupon.created", "discount.created", "discount.deleted"} <= set(types)
    deleted = _ok(admin.delete(f"/v1/coupons/{coupon['id']}"))
    assert deleted["valid"] is False
    _error(admin.get(f"/v1/coupons/{coupon['id']}"), 404, "resource_missing")


def test_each_unredeemable_coupon_or_code_is_refused_with_its_code_and_nothing_changes(
    admin, make_customer, make_coupon, make_code
):
    customer = make_customer()
    other = make_customer()
    expiring = make_coupon(redeem_by=int(datetime(2026, 2, 1, tzinfo=UTC).timestamp()))
    dollars = make_coupon(percent_off=None, amount_off=500, currency="usd")
    exhausted = make_coupon(max_redemptions=1)
    _ok(admin.post(f"/v1/customers/{other['id']}/discounts", json={"coupon": exhausted["id"]}))
    plain = make_coupon()
    inactive = make_code(plain, code="OFF", active=False)
    expired = make_code(
        plain, code="LATE", expires_at=int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    )
    theirs = make_code(plain, code="THEIRS", customer=other["id"])
    clock.set_now(datetime(2026, 2, 2, tzinfo=UTC))  # past redeem_by and expires_at
    before = {c.id: c.times_redeemed for c in db.session.scalars(select(Coupon))}
    cases = [
        ({"coupon": expiring["id"]}, "coupon_expired"),
        ({"coupon": dollars["id"]}, "coupon_currency_mismatch"),
        ({"coupon": exhausted["id"]}, "coupon_max_redemptions"),
        ({"promotion_code": inactive["id"]}, "promotion_code_inactive"),
        ({"promotion_code": expired["id"]}, "promotion_code_expired"),
        ({"promotion_code": theirs["id"]}, "promotion_code_customer_mismatch"),
    ]
    for body, code in cases:
        _error(admin.post(f"/v1/customers/{customer['id']}/discounts", json=body), 422, code)
        response = admin.post(
            "/v1/invoices",
            json={"customer": customer["id"], "lines": [_line(1_000)], "discounts": [body]},
        )
        assert _error(response, 422, code)["param"] == "discounts.0"
    db.session.expire_all()
    assert {c.id: c.times_redeemed for c in db.session.scalars(select(Coupon))} == before
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0
    assert db.session.scalar(select(func.count()).select_from(Discount)) == 1
    assert not db.session.scalar(select(func.sum(PromotionCode.times_redeemed)))


def test_a_subscription_started_with_an_unredeemable_coupon_is_not_started_at_all(
    admin, make_customer, make_coupon
):
    from billing.models import Subscription

    coupon = make_coupon(percent_off=None, amount_off=500, currency="usd")
    price = _ok(
        admin.post(
            "/v1/prices",
            json={
                "product": "Team plan",
                "unit_amount": 1_000,
                "currency": "eur",
                "interval": "month",
            },
        )
    )
    body = {"customer": make_customer()["id"], "price": price["id"], "coupon": coupon["id"]}
    _error(admin.post("/v1/subscriptions", json=body), 422, "coupon_currency_mismatch")
    both = {**body, "promotion_code": "promo_01x"}
    _error(admin.post("/v1/subscriptions", json=both), 400, "parameter_invalid")
    for model in (Subscription, Invoice, Discount):
        assert db.session.scalar(select(func.count()).select_from(model)) == 0
