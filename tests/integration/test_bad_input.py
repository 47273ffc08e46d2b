"""Bad input gets a clear JSON error with a stable code, and changes nothing."""

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import Customer, Invoice, LedgerEntry, OutboxJob

GOOD = {"name": "Acme", "email": "billing@acme.example", "currency": "eur"}


def _nothing_changed() -> bool:
    return all(
        db.session.scalar(select(func.count()).select_from(model)) == 0
        for model in (Customer, Invoice, OutboxJob, LedgerEntry)
    )


def _error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error = response.get_json()["error"]
    assert error["code"] and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({**GOOD, "currency": "xyz"}, "parameter_invalid", "currency"),
        ({**GOOD, "currency": 978}, "parameter_invalid", "currency"),
        ({**GOOD, "name": ""}, "parameter_invalid", "name"),
        ({**GOOD, "name": "x" * 257}, "parameter_invalid", "name"),
        ({**GOOD, "name": "Evil\r\nBcc: victim@example.com"}, "invalid_characters", "name"),
        ({**GOOD, "email": "not-an-email"}, "parameter_invalid", "email"),
        ({**GOOD, "email": "a@b.co\r\nBcc: x@y.z"}, "invalid_characters", "email"),
        ({**GOOD, "colour": "red"}, "parameter_unknown", "colour"),
        ({"name": "Acme", "currency": "eur"}, "parameter_missing", "email"),
        ({**GOOD, "metadata": {"k": 1}}, "parameter_invalid", "metadata.k"),
        ({**GOOD, "metadata": {f"k{i}": "v" for i in range(51)}}, "parameter_invalid", "metadata"),
        ({**GOOD, "address": {"country": "Germany"}}, "parameter_invalid", "address.country"),
        ([GOOD], "parameter_invalid", None),
    ],
)
def test_invalid_customers_are_refused_with_the_offending_parameter(admin, body, code, param):
    error = _error(admin.post("/v1/customers", json=body), 400)
    assert error["code"] == code
    assert error["param"] == param
    assert _nothing_changed()


@pytest.mark.parametrize(
    ("line", "param"),
    [
        ({"description": "x", "quantity": -1, "unit_amount": 100}, "lines.0.quantity"),
        ({"description": "x", "quantity": 0, "unit_amount": 100}, "lines.0.quantity"),
        ({"description": "x", "quantity": "3", "unit_amount": 100}, "lines.0.quantity"),
        ({"description": "x", "quantity": 1.5, "unit_amount": 100}, "lines.0.quantity"),
        ({"description": "x", "unit_amount": -100}, "lines.0.unit_amount"),
        ({"description": "x", "unit_amount": 10**15}, "lines.0.unit_amount"),
        ({"description": "x", "unit_amount": 100, "tax_rate": 101}, "lines.0.tax_rate"),
        ({"description": "x", "unit_amount": 100, "tax_rate": "abc"}, "lines.0.tax_rate"),
        ({"description": "x", "unit_amount": 100, "tax_rate": 7.12345}, "lines.0.tax_rate"),
        ({"description": "x", "unit_amount": 100, "tax_rate": True}, "lines.0.tax_rate"),
        ({"description": "", "unit_amount": 100}, "lines.0.description"),
        ({"description": "x", "unit_amount": 100, "discount": 5}, "lines.0.discount"),
    ],
)
def test_invalid_lines_are_refused_and_no_invoice_is_made(admin, make_customer, line, param):
    customer = make_customer()
    response = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": [line]})
    assert _error(response, 400)["param"] == param
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0


def test_malformed_json_is_refused(admin):
    response = admin.post(
        "/v1/customers", data=b'{"name": "Acme",', headers={"Content-Type": "application/json"}
    )
    assert _error(response, 400)["code"] == "invalid_json"
    assert _nothing_changed()


def test_an_oversized_request_is_refused_before_it_is_read(admin):
    response = admin.post("/v1/customers", json={**GOOD, "name": "x" * (2 * 1024 * 1024)})
    assert _error(response, 413)["code"] == "request_too_large"
    assert _nothing_changed()


def test_an_endpoint_without_parameters_refuses_unknown_ones(admin, make_customer):
    customer = make_customer()
    draft = admin.post(
        "/v1/invoices",
        json={"customer": customer["id"], "lines": [{"description": "x", "unit_amount": 1}]},
    ).get_json()
    response = admin.post(f"/v1/invoices/{draft['id']}/finalize", json={"force": True})
    assert _error(response, 400)["code"] == "parameter_unknown"
    assert admin.get(f"/v1/invoices/{draft['id']}").get_json()["status"] == "draft"


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=ten", "status=paid-ish", "starting_after=bad id", "foo=1"],
)
def test_invalid_list_parameters_are_refused(admin, query):
    assert _error(admin.get(f"/v1/invoices?{query}"), 400)["code"] in (
        "parameter_invalid",
        "parameter_unknown",
    )


def test_unknown_routes_and_methods_answer_json(admin):
    assert _error(admin.get("/v1/nothing-here"), 404)["code"] == "route_not_found"
    response = admin.client.put(
        "/v1/customers", headers={"Authorization": f"Bearer {admin.secret}"}
    )
    assert _error(response, 405)["code"] == "method_not_allowed"


def test_an_unknown_id_answers_404_with_the_param(admin):
    error = _error(admin.get("/v1/invoices/in_doesnotexist"), 404)
    assert error == {
        "code": "resource_missing",
        "message": "No such invoice: 'in_doesnotexist'",
        "param": "id",
    }


def test_an_idempotency_key_that_is_too_long_is_refused(admin):
    response = admin.post("/v1/customers", json=GOOD, headers={"Idempotency-Key": "k" * 256})
    assert _error(response, 400)["code"] == "idempotency_key_invalid"
    assert _nothing_changed()


@pytest.mark.parametrize("field", ["name", "email", "currency", "metadata"])
def test_a_patch_cannot_null_a_required_field(admin, make_customer, field):
    customer = make_customer()
    error = _error(admin.patch(f"/v1/customers/{customer['id']}", json={field: None}), 400)
    assert error["param"] == field
    assert admin.get(f"/v1/customers/{customer['id']}").get_json() == {**customer, "sync_job": None}


def test_nul_characters_are_refused_in_metadata_and_descriptions(admin, make_customer):
    response = admin.post("/v1/customers", json={**GOOD, "metadata": {"k": "a\u0000b"}})
    assert _error(response, 400)["param"] == "metadata.k"
    customer = make_customer()
    response = admin.post(
        "/v1/invoices", json={"customer": customer["id"], "description": "\u0000"}
    )
    assert _error(response, 400)["param"] == "description"


@pytest.mark.parametrize("path", ["/v1/customers/a%00b", "/v1/invoices/a%00b", "/v1/jobs/a%00b"])
def test_an_id_we_could_never_have_issued_answers_404(admin, path):
    assert _error(admin.get(path), 404)["code"] == "resource_missing"


def test_a_total_beyond_any_real_invoice_is_refused_not_overflowed(admin, make_customer):
    customer = make_customer()
    line = {"description": "x", "quantity": 1_000_000, "unit_amount": 99_999_999_999}
    response = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": [line]})
    assert _error(response, 422)["code"] == "invalid_request"
    small = {"description": "x", "quantity": 1_000_000, "unit_amount": 900_000}
    response = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": [small] * 2})
    assert _error(response, 422)["param"] == "lines"
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0


def test_deeply_nested_json_with_an_idempotency_key_is_refused(admin):
    response = admin.client.post(
        "/v1/customers",
        data=b"[" * 200_000,
        content_type="application/json",
        headers={"Authorization": f"Bearer {admin.secret}", "Idempotency-Key": "deep"},
    )
    assert _error(response, 400)["code"] == "invalid_json"


COUPON = {"name": "Spring sale", "percent_off": 20}


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({**COUPON, "percent_off": 0}, 400, "parameter_invalid", "percent_off"),
        ({**COUPON, "percent_off": 100.5}, 400, "parameter_invalid", "percent_off"),
        ({**COUPON, "percent_off": "abc"}, 400, "parameter_invalid", "percent_off"),
        ({**COUPON, "percent_off": True}, 400, "parameter_invalid", "percent_off"),
        ({**COUPON, "amount_off": 500, "currency": "eur"}, 422, "coupon_invalid", "percent_off"),
        ({"name": "x"}, 422, "coupon_invalid", "percent_off"),
        ({"name": "x", "amount_off": 500}, 422, "coupon_invalid", "currency"),
        ({"name": "x", "amount_off": 0, "currency": "eur"}, 400, "parameter_invalid", "amount_off"),
        ({"name": "x", "amount_off": 1005, "currency": "kwd"}, 422, "coupon_invalid", "amount_off"),
        ({**COUPON, "duration": "repeating"}, 422, "coupon_invalid", "duration_in_months"),
        ({**COUPON, "duration_in_months": 3}, 422, "coupon_invalid", "duration_in_months"),
        (
            {**COUPON, "duration": "repeating", "duration_in_months": 0},
            400,
            "parameter_invalid",
            "duration_in_months",
        ),
        ({**COUPON, "duration": "weekly"}, 400, "parameter_invalid", "duration"),
        ({**COUPON, "max_redemptions": 0}, 400, "parameter_invalid", "max_redemptions"),
        ({**COUPON, "redeem_by": 1_000}, 422, "coupon_invalid", "redeem_by"),
        ({**COUPON, "name": "Evil\r\nBcc: x@y.z"}, 400, "invalid_characters", "name"),
    ],
)
def test_invalid_coupons_are_refused_with_a_stable_code_and_nothing_is_made(
    admin, body, status, code, param
):
    from billing.models import Coupon

    error = _error(admin.post("/v1/coupons", json=body), status)
    assert (error["code"], error["param"]) == (code, param)
    assert db.session.scalar(select(func.count()).select_from(Coupon)) == 0


@pytest.mark.parametrize(
    ("discount", "param"),
    [
        ({}, "discounts.0"),
        ({"coupon": "co_1", "promotion_code": "promo_1"}, "discounts.0"),
        ({"coupon": "Spring"}, "discounts.0.coupon"),
        ({"percent_off": 10}, "discounts.0.percent_off"),
    ],
)
def test_invalid_invoice_discounts_are_refused_and_no_invoice_is_made(
    admin, make_customer, discount, param
):
    customer = make_customer()
    line = {"description": "x", "unit_amount": 100}
    response = admin.post(
        "/v1/invoices", json={"customer": customer["id"], "lines": [line], "discounts": [discount]}
    )
    assert _error(response, 400)["param"] == param
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0


def test_a_missing_coupon_or_promotion_code_answers_404_and_nothing_is_made(admin, make_customer):
    customer = make_customer()
    for body, param in (
        ({"coupon": "co_01missing"}, "coupon"),
        ({"promotion_code": "promo_01missing"}, "promotion_code"),
    ):
        response = admin.post(f"/v1/customers/{customer['id']}/discounts", json=body)
        assert (_error(response, 404)["code"], response.get_json()["error"]["param"]) == (
            "resource_missing",
            param,
        )
    response = admin.post("/v1/promotion_codes", json={"code": "X", "coupon": "co_01missing"})
    assert _error(response, 404)["param"] == "coupon"
    response = admin.post("/v1/promotion_codes", json={"code": "a b", "coupon": "co_01missing"})
    assert _error(response, 400)["param"] == "code"
