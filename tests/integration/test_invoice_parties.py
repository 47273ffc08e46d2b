"""An issued invoice keeps the seller and buyer it was issued with: a customer who moves or
renames itself, or a seller who changes its settings, never changes what an invoice already
finalized says, on paper or in its emails."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from billing.documents import documents
from billing.extensions import db
from billing.models import Invoice
from billing.platform import clock
from billing.subscriptions import subscriptions as subscription_service
from tests.integration.test_documents import pdf_text

ISSUING_SELLER = {
    "seller_name": "Initrode Software GmbH",
    "seller_address": ("Alte Strasse 1", "10115 Berlin"),
    "seller_tax_id": "DE111111111",
    "seller_email": "billing@initrode.example",
}
LATER_SELLER = {
    "seller_name": "Initrode Holding SE",
    "seller_address": ("Neuer Weg 9", "80331 Munich"),
    "seller_tax_id": "DE999999999",
    "seller_email": "accounts@initrode-holding.example",
}
ISSUED_TO = {
    "name": "Globex Corporation",
    "email": "ap@globex.example",
    "address": {"line1": "12 Old Road", "postal_code": "20095", "city": "Hamburg", "country": "DE"},
    "tax_id": "DE123456789",
    # Typed without its kind: kept as given.
    "tax_id_type": None,
}
LATER_BUYER = {
    "name": "Globex International",
    "address": {
        "line1": "99 New Avenue",
        "postal_code": "50667",
        "city": "Cologne",
        "country": "DE",
    },
    "tax_id": "DE987654321",
}
SHOWN_WHEN_ISSUED = (
    "Initrode Software GmbH",
    "Alte Strasse 1",
    "DE111111111",
    "billing@initrode.example",
    "Globex Corporation",
    "12 Old Road",
    "Hamburg",
    "DE123456789",
)
CHANGED_SINCE = (
    "Initrode Holding SE",
    "Neuer Weg 9",
    "DE999999999",
    "initrode-holding",
    "Globex International",
    "99 New Avenue",
    "Cologne",
    "DE987654321",
)


def _squeezed(text: str) -> str:
    """Without whitespace: PDF extraction breaks long strings at wrapped lines."""
    return "".join(text.split())


def _set_seller(app, **fields: Any) -> None:
    settings = app.config["BILLING_SETTINGS"]
    app.config["BILLING_SETTINGS"] = settings.model_copy(update=fields)


def _issue(admin, customer: dict[str, Any]) -> dict[str, Any]:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Annual licence", "quantity": 1, "unit_amount": 12000}],
        },
    ).get_json()
    finalized = admin.post(f"/v1/invoices/{draft['id']}/finalize")
    assert finalized.status_code == 200, finalized.get_json()
    return finalized.get_json()  # type: ignore[no-any-return]


def _change_everything(app, admin, customer: dict[str, Any]) -> None:
    changed = admin.patch(f"/v1/customers/{customer['id']}", json=LATER_BUYER)
    assert changed.status_code == 200, changed.get_json()
    _set_seller(app, **LATER_SELLER)


def _pdf(admin, invoice: dict[str, Any]) -> str:
    response = admin.get(f"/v1/invoices/{invoice['id']}/pdf")
    assert response.status_code == 200
    return _squeezed(pdf_text(response.data))


def test_an_invoice_rendered_and_emailed_after_the_parties_changed_shows_them_as_issued(
    app, admin, make_customer, run_jobs, mailbox
):
    _set_seller(app, **ISSUING_SELLER)
    customer = make_customer(currency="eur", **ISSUED_TO)
    invoice = _issue(admin, customer)
    _change_everything(app, admin, customer)

    run_jobs()  # the PDF is rendered and the email sent only now

    shown = _pdf(admin, invoice)
    assert [v for v in SHOWN_WHEN_ISSUED if _squeezed(v) not in shown] == []
    assert [v for v in CHANGED_SINCE if _squeezed(v) in shown] == []
    [received] = mailbox.messages
    message = received.message
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "Initrode Software GmbH" in message["Subject"]
    for body in (text, html):
        assert "Globex Corporation" in body and "Initrode Software GmbH" in body
        assert "billing@initrode.example" in body
        assert "Globex International" not in body and "Initrode Holding" not in body
    assert "Globex Corporation" in message["To"]


def test_changing_the_customer_or_the_seller_does_not_reissue_a_rendered_invoice(
    app, admin, make_customer, run_jobs
):
    _set_seller(app, **ISSUING_SELLER)
    customer = make_customer(**ISSUED_TO)
    invoice = _issue(admin, customer)
    run_jobs()
    _change_everything(app, admin, customer)

    assert documents.render_invoice(invoice["id"]) == "unchanged"
    # An operator's forced rerender renders again, and finds the very same document.
    assert documents.render_invoice(invoice["id"], force=True) == "unchanged"
    shown = _pdf(admin, invoice)
    assert [v for v in SHOWN_WHEN_ISSUED if _squeezed(v) not in shown] == []


def test_an_invoice_finalized_before_parties_were_kept_shows_the_current_ones(
    app, admin, make_customer, run_jobs
):
    _set_seller(app, **ISSUING_SELLER)
    customer = make_customer(**ISSUED_TO)
    invoice = _issue(admin, customer)
    db.session.execute(
        update(Invoice)
        .where(Invoice.id == invoice["id"])
        .values(seller_party=None, buyer_party=None)
    )
    db.session.commit()
    _change_everything(app, admin, customer)
    run_jobs()
    shown = _pdf(admin, invoice)
    assert [v for v in CHANGED_SINCE if _squeezed(v) not in shown] == []


def test_the_billing_run_keeps_the_parties_of_every_invoice_it_issues(app, admin, make_customer):
    clock.set_now(datetime(2026, 1, 31, 9, 0, tzinfo=UTC))
    try:
        _set_seller(app, **ISSUING_SELLER)
        customer = make_customer(**ISSUED_TO)
        price = admin.post(
            "/v1/prices",
            json={
                "product": "Team plan",
                "unit_amount": 1000,
                "currency": "eur",
                "interval": "month",
            },
        ).get_json()
        subscription = admin.post(
            "/v1/subscriptions",
            json={
                "customer": customer["id"],
                "price": price["id"],
                "collection_method": "send_invoice",
                "days_until_due": 14,
            },
        ).get_json()
        first = subscription["latest_invoice"]
        _change_everything(app, admin, customer)
        clock.set_now(datetime(2026, 2, 28, 9, 30, tzinfo=UTC))
        assert subscription_service.run_billing().invoices_created == 1
    finally:
        clock.reset()

    db.session.expire_all()
    second = admin.get(f"/v1/subscriptions/{subscription['id']}").get_json()["latest_invoice"]
    assert second != first
    issued_first, issued_second = db.session.get(Invoice, first), db.session.get(Invoice, second)
    assert issued_first.seller_party == {
        "name": "Initrode Software GmbH",
        "address_lines": ["Alte Strasse 1", "10115 Berlin"],
        "tax_id": "DE111111111",
        "email": "billing@initrode.example",
    }
    assert issued_first.buyer_party == ISSUED_TO
    # The run's invoice was issued after the changes: it keeps the parties of its own day.
    assert issued_second.seller_party == {
        "name": "Initrode Holding SE",
        "address_lines": ["Neuer Weg 9", "80331 Munich"],
        "tax_id": "DE999999999",
        "email": "accounts@initrode-holding.example",
    }
    assert issued_second.buyer_party == {**ISSUED_TO, **LATER_BUYER}
