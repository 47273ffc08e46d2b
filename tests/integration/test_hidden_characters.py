"""Text that reaches an invoice or an email must read as it is: control characters, invisible
formatting characters (a right-to-left override turns what follows around, zero widths hide
a difference) and line or paragraph separators are refused in every such field, with one
stable code, and nothing is created or changed."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import Customer, Invoice, InvoiceLine, Price

HIDDEN = {
    "\u202e": "right-to-left override",
    "\u2066": "left-to-right isolate",
    "\u200b": "zero width space",
    "\u200d": "zero width joiner",
    "\ufeff": "zero width no-break space",
    "\u00ad": "soft hyphen",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
    "\x1b": "escape",
    "\x85": "next line",
    "\x7f": "delete",
}
GOOD_CUSTOMER = {
    "name": "Acme GmbH",
    "email": "billing@acme.example",
    "currency": "eur",
    "address": {"line1": "Hauptstrasse 5", "postal_code": "10115", "city": "Berlin"},
}


def _counts() -> dict[str, int]:
    db.session.expire_all()
    return {
        model.__tablename__: db.session.scalar(select(func.count()).select_from(model))
        for model in (Customer, Invoice, InvoiceLine, Price)
    }


def _refused(response: Any, param: str) -> None:
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert (error["code"], error["param"]) == ("invalid_characters", param)


@pytest.mark.parametrize("hidden", HIDDEN, ids=HIDDEN.values())
def test_a_hidden_character_is_refused_in_every_text_a_document_or_email_shows(
    admin, make_customer, hidden
):
    customer = make_customer()
    draft = admin.post(
        "/v1/invoices",
        json={"customer": customer["id"], "lines": [{"description": "Seats", "unit_amount": 100}]},
    ).get_json()
    before = _counts()
    # Inside the text: at either end, the separators among them are trimmed as whitespace.
    text = f"Acme{hidden}Corp"

    for field in ("name", "tax_id"):
        _refused(admin.post("/v1/customers", json={**GOOD_CUSTOMER, field: text}), field)
    for field in ("line1", "line2", "city", "state", "postal_code"):
        address = {**GOOD_CUSTOMER["address"], field: text}
        body = {**GOOD_CUSTOMER, "address": address}
        _refused(admin.post("/v1/customers", json=body), f"address.{field}")
    for field, value, param in (
        ("email", f"ap{hidden}x@acme.example", "email"),
        ("billing_emails", [f"ap{hidden}x@acme.example"], "billing_emails.0"),
    ):
        _refused(admin.post("/v1/customers", json={**GOOD_CUSTOMER, field: value}), param)
    for field, value, param in (
        ("name", text, "name"),
        ("tax_id", text, "tax_id"),
        ("email", f"ap{hidden}x@acme.example", "email"),
        ("address", {"line1": text}, "address.line1"),
    ):
        response = admin.patch(f"/v1/customers/{customer['id']}", json={field: value})
        _refused(response, param)
    line = {"description": f"Sea{hidden}ts", "unit_amount": 100}
    _refused(
        admin.post("/v1/invoices", json={"customer": customer["id"], "lines": [line]}),
        "lines.0.description",
    )
    _refused(
        admin.post("/v1/invoices", json={"customer": customer["id"], "description": text}),
        "description",
    )
    _refused(admin.post(f"/v1/invoices/{draft['id']}/lines", json=line), "description")
    price = {"product": text, "unit_amount": 1000, "currency": "eur", "interval": "month"}
    _refused(admin.post("/v1/prices", json=price), "product")

    assert _counts() == before
    assert admin.get(f"/v1/customers/{customer['id']}").get_json() == {
        **customer,
        "sync_job": None,
    }


def test_names_in_any_script_are_welcome_where_a_hidden_character_is_not(admin):
    name = "Zoë Ünal-Åberg 株式会社\u00a0شركة"
    response = admin.post("/v1/customers", json={**GOOD_CUSTOMER, "name": name})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["name"] == name
    hidden = admin.post("/v1/customers", json={**GOOD_CUSTOMER, "name": "Zoë\u200b Ünal"})
    _refused(hidden, "name")


def test_an_invoice_memo_may_run_over_several_lines_but_hide_nothing(admin, make_customer):
    customer = make_customer()
    memo = "Thank you for your order.\r\nPlease quote the PO number.\n\tPO 4711"
    response = admin.post("/v1/invoices", json={"customer": customer["id"], "description": memo})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["description"] == memo
    hidden = {"customer": customer["id"], "description": "Pay to\u202e 4711"}
    _refused(admin.post("/v1/invoices", json=hidden), "description")
