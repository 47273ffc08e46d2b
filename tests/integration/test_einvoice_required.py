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
