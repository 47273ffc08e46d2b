"""EINVOICE_REQUIRED=always: any invoice, whoever the buyer, must be able to yield a valid
e-invoice to be finalized."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "EINVOICE_REQUIRED": "always", "SELLER_TAX_ID": "GB123456789"}


def _draft(admin: Any, customer: dict[str, Any]) -> str:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [{"description": "Platform seats", "quantity": 2, "unit_amount": 2500}],
        },
    )
    assert draft.status_code == 200, draft.get_json()
    return str(draft.get_json()["id"])


def test_with_e_invoices_required_a_seller_without_a_country_cannot_finalize(
    admin, make_customer
) -> None:
    customer = make_customer(address={"line1": "1 Market St", "country": "US"})
    refused = admin.post(f"/v1/invoices/{_draft(admin, customer)}/finalize")
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert (error["code"], error["param"]) == ("einvoice_field_missing", "seller_country")


def test_a_subscription_s_invoice_that_cannot_yield_its_e_invoice_waits_as_a_draft(
    service_env, admin, make_customer
) -> None:
    from sqlalchemy import select

    from billing import create_app
    from billing.extensions import db
    from billing.models import ChargeAttempt, Event

    customer = make_customer(address={"line1": "1 Market St", "country": "US"})
    price = admin.post(
        "/v1/prices",
        json={"product": "Team plan", "unit_amount": 1000, "currency": "eur", "interval": "month"},
    ).get_json()
    subscribed = admin.post(
        "/v1/subscriptions", json={"customer": customer["id"], "price": price["id"]}
    )
    # The subscription starts: its period is invoiced, once, by a draft that says why.
    assert subscribed.status_code == 200, subscribed.get_json()
    invoice_id = subscribed.get_json()["latest_invoice"]
    invoice = admin.get(f"/v1/invoices/{invoice_id}").get_json()
    assert (invoice["status"], invoice["number"]) == ("draft", None)
    db.session.rollback()
    assert db.session.scalars(select(Event.type).where(Event.object_id == invoice_id)).all() == [
        "invoice.created",
        "invoice.finalization_failed",
    ]
    assert not db.session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.invoice_id == invoice_id)
    ).all()

    # Once the seller's data is complete, the draft is finalized as any other.
    fixed = create_app(
        {
            **service_env,
            "SELLER_COUNTRY": "GB",
            "SELLER_STREET": "1 High St",
            "SELLER_CITY": "London",
            "SELLER_POSTAL_CODE": "EC1A 1AA",
        }
    ).test_client()
    finalized = fixed.post(
        f"/v1/invoices/{invoice_id}/finalize", headers={"Authorization": f"Bearer {admin.secret}"}
    )
    assert finalized.status_code == 200, finalized.get_json()
    assert finalized.get_json()["status"] == "open"
