"""Limits that hold for the whole object, not only for one request: metadata merged into
what a customer has, and lines added to an invoice one request at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.invoicing.rules import MAX_LINES_PER_INVOICE
from billing.models import Invoice, InvoiceLine


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    # These tests send hundreds of requests as fast as the machine allows: a fast machine
    # would meet the API's own rate limit, which is not what they are about.
    return {**service_env, "API_RATE_LIMIT": "100000 per second"}


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    return response.get_json()["error"]  # type: ignore[no-any-return]


def test_metadata_merged_beyond_fifty_keys_is_refused_and_nothing_changes(admin, make_customer):
    customer = make_customer(metadata={f"key{i}": "value" for i in range(45)})
    # Within the limit on its own, and with a name change that must not happen either.
    update = {"name": "Renamed GmbH", "metadata": {f"new{i}": "value" for i in range(6)}}
    response = admin.patch(f"/v1/customers/{customer['id']}", json=update)
    error = _error(response, 400)
    assert (error["code"], error["param"]) == ("metadata_limit_exceeded", "metadata")
    current = admin.get(f"/v1/customers/{customer['id']}").get_json()
    assert current == {**customer, "sync_job": None}
    # Deleting keys in the same update makes room: the merged result is what counts.
    update["metadata"] |= {f"key{i}": "" for i in range(6)}
    response = admin.patch(f"/v1/customers/{customer['id']}", json=update)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["metadata"]) == 45


def _lines(count: int) -> list[dict[str, Any]]:
    return [{"description": f"Seat {i + 1}", "unit_amount": 100} for i in range(count)]


def _line_count() -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(InvoiceLine)) or 0


def test_an_invoice_created_with_more_lines_than_the_cap_is_refused(admin, make_customer):
    customer = make_customer()
    body = {"customer": customer["id"], "lines": _lines(MAX_LINES_PER_INVOICE + 1)}
    error = _error(admin.post("/v1/invoices", json=body), 400)
    assert (error["code"], error["param"]) == ("too_many_lines", "lines")
    assert db.session.scalar(select(func.count()).select_from(Invoice)) == 0
    assert _line_count() == 0


def test_a_line_added_beyond_the_cap_is_refused_and_the_invoice_keeps_its_lines(
    admin, make_customer
):
    customer = make_customer()
    body = {"customer": customer["id"], "lines": _lines(MAX_LINES_PER_INVOICE)}
    created = admin.post("/v1/invoices", json=body)
    assert created.status_code == 200, created.get_json()
    invoice = created.get_json()
    extra = {"description": "One seat too many", "unit_amount": 100}
    error = _error(admin.post(f"/v1/invoices/{invoice['id']}/lines", json=extra), 400)
    assert (error["code"], error["param"]) == ("too_many_lines", "lines")
    assert _line_count() == MAX_LINES_PER_INVOICE
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["total"] == invoice["total"]


def test_a_subscription_changed_as_often_as_its_next_invoice_can_hold_is_still_invoiced(
    admin, make_customer
):
    from billing.platform import clock
    from billing.subscriptions import subscriptions

    clock.set_now(datetime(2026, 1, 31, 9, 0, tzinfo=UTC))
    try:
        price = admin.post(
            "/v1/prices",
            json={"product": "Seat", "unit_amount": 3100, "currency": "eur", "interval": "month"},
        ).get_json()
        subscription = admin.post(
            "/v1/subscriptions",
            json={
                "customer": make_customer()["id"],
                "price": price["id"],
                "collection_method": "send_invoice",
            },
        ).get_json()
        clock.set_now(datetime(2026, 2, 10, 9, 0, tzinfo=UTC))
        for change in range(MAX_LINES_PER_INVOICE):
            quantity = 2 + change % 2
            response = admin.patch(
                f"/v1/subscriptions/{subscription['id']}", json={"quantity": quantity}
            )
            if response.status_code != 200:
                break
        error = _error(response, 400)
        assert (error["code"], error["param"]) == ("too_many_lines", "quantity")
        clock.set_now(datetime(2026, 2, 28, 9, 30, tzinfo=UTC))
        assert subscriptions.run_billing().invoices_created == 1
    finally:
        clock.reset()
    latest = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()["latest_invoice"]
    lines = admin.get(f"/v1/invoices/{latest}").get_json()["lines"]["data"]
    assert MAX_LINES_PER_INVOICE - 3 <= len(lines) <= MAX_LINES_PER_INVOICE
