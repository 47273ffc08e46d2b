"""Creating webhook endpoints with the default settings (no allowed hosts): bad input and
SSRF probes are refused with a clear code, and nothing is created."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from billing.extensions import db
from billing.models import WebhookEndpoint


def _create(admin: Any, **fields: Any) -> Any:
    return admin.post(
        "/v1/webhook_endpoints",
        json={"url": "https://hooks.example.com/billing", "enabled_events": ["*"], **fields},
    )


def _count() -> int:
    found = db.session.scalar(select(func.count()).select_from(WebhookEndpoint))
    db.session.commit()
    return int(found or 0)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1/hooks", "url_not_https"),
        ("https://127.0.0.1/hooks", "url_private_address"),
        ("http://169.254.169.254/latest/meta-data", "url_not_https"),
        ("https://169.254.169.254/latest/meta-data", "url_private_address"),
        ("https://10.0.0.1/hooks", "url_private_address"),
        ("https://localhost/hooks", "url_private_address"),
        ("https://[::1]/hooks", "url_private_address"),
        ("https://[::ffff:127.0.0.1]/hooks", "url_private_address"),
        ("https://[::ffff:a9fe:a9fe]/hooks", "url_private_address"),
        ("not a url", "url_invalid"),
        ("https://user:pass@hooks.example.com/", "url_invalid"),
    ],
)
def test_an_unsafe_or_malformed_url_is_refused_at_creation(admin, url, code):
    response = _create(admin, url=url)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["param"] == "url"
    assert _count() == 0


def test_unknown_event_types_are_refused_and_named(admin):
    response = _create(admin, enabled_events=["invoice.paid", "invoice.exploded"])
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "event_type_unknown" and "invoice.exploded" in error["message"]
    assert _count() == 0


def test_an_oversized_description_is_refused(admin):
    response = _create(admin, description="x" * 501)
    assert 400 <= response.status_code < 500
    assert response.get_json()["error"]["code"]
    assert _count() == 0


def test_an_unsafe_url_is_refused_on_update_too(admin):
    # Stored directly: the network is closed here, so no public name resolves.
    row = WebhookEndpoint(url="https://hooks.example.com/", event_types=["*"])
    db.session.add(row)
    db.session.commit()
    response = admin.patch(f"/v1/webhook_endpoints/{row.id}", json={"url": "https://10.1.2.3/"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "url_private_address"
    db.session.expire_all()
    assert db.session.get(WebhookEndpoint, row.id).url == "https://hooks.example.com/"


def test_a_customer_key_cannot_manage_webhook_endpoints(customer_api, make_customer):
    as_customer = customer_api(make_customer()["id"])
    assert _create(as_customer).status_code == 403
    assert as_customer.get("/v1/webhook_endpoints").status_code == 403
