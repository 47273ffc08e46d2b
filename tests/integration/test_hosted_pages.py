"""The hosted invoice page over HTTP (the browser's own journeys are in tests/browser):
what it shows, who it refuses, and that paying on it charges once."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from billing import create_app
from billing.extensions import db
from billing.hosted import links
from billing.models import ChargeAttempt, Event, Invoice
from billing.platform import clock
from tests.conftest import CARD_DECLINED_AFTER_ATTACH, CARD_NEEDS_3DS, CARD_OK, intents_for_invoice

KEY = "k1:" + "a" * 40
ROTATED = "k2:" + "b" * 40


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "PUBLIC_BASE_URL": "https://billing.example",
        "HOSTED_LINK_KEYS": KEY,
        "STRIPE_PUBLISHABLE_KEY": "pk_test_local",
    }


def path_of(invoice: dict[str, Any]) -> str:
    return urlsplit(invoice["hosted_invoice_url"]).path


def csrf_of(page: Any) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
    assert found, "the page carries a CSRF token"
    return found.group(1)


def attempts_of(invoice_id: str) -> list[ChargeAttempt]:
    db.session.rollback()
    return list(
        db.session.scalars(select(ChargeAttempt).where(ChargeAttempt.invoice_id == invoice_id))
    )


def hosted_events(invoice_id: str) -> list[str]:
    db.session.rollback()
    return list(
        db.session.scalars(
            select(Event.type).where(Event.object_id == invoice_id, Event.type.like("invoice.%"))
        )
    )


def test_every_finalized_invoice_has_a_page_and_its_email_links_to_it(
    admin, client, make_customer, open_invoice, run_jobs, mailbox
):
    customer = make_customer()
    draft = admin.post(
        "/v1/invoices",
        json={"customer": customer["id"], "lines": [{"description": "Seats", "unit_amount": 100}]},
    ).get_json()
    assert draft["hosted_invoice_url"] is None
    invoice = open_invoice(customer, collection_method="send_invoice", days_until_due=30)
    assert invoice["hosted_invoice_url"].startswith("https://billing.example/pay/")
    run_jobs()
    [received] = mailbox.messages
    text = received.message.get_body(("plain",)).get_content()
    [link] = re.findall(r"https://billing\.example/pay/\S+", text)
    page = client.get(urlsplit(link).path)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert f"Invoice {invoice['number']}" in body
    assert 'data-status="open"' in body
    assert "€50.00" in body


def test_the_page_shows_the_invoice_as_its_pdf_does_and_hides_every_internal_id(
    admin, client, make_customer, open_invoice, run_jobs
):
    customer = make_customer()
    invoice = open_invoice(customer, collection_method="send_invoice", days_until_due=30)
    run_jobs()
    page = client.get(path_of(invoice))
    body = page.get_data(as_text=True)
    for shown in ("Seats", "Subtotal", "Amount due", "Payments", "Download PDF", "UBL"):
        assert shown in body
    assert invoice["id"] not in body and customer["id"] not in body
    assert "sk_test" not in body and "Bearer" not in body
    pdf = client.get(f"{path_of(invoice)}/pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    assert pdf.headers["Referrer-Policy"] == "no-referrer"


def test_the_page_is_locked_down_by_its_headers(admin, client, make_customer, open_invoice):
    invoice = open_invoice(make_customer())
    page = client.get(path_of(invoice))
    policy = page.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "script-src 'self' https://js.stripe.com" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.get_data(as_text=True)  # no inline script at all


@pytest.mark.parametrize(
    "field", ["name", "description", "line", "buyer_reference"], ids=lambda f: f"html in {f}"
)
def test_html_in_any_field_is_shown_as_text(admin, client, make_customer, field):
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    customer = make_customer(**({"name": hostile} if field == "name" else {}))
    body: dict[str, Any] = {
        "customer": customer["id"],
        "lines": [{"description": hostile if field == "line" else "Seats", "unit_amount": 700}],
    }
    if field in ("description", "buyer_reference"):
        body[field] = hostile
    draft = admin.post("/v1/invoices", json=body).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    shown = client.get(path_of(invoice)).get_data(as_text=True)
    assert hostile not in shown
    assert "&lt;script&gt;alert(" in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown


def _not_valid(response: Any) -> None:
    assert response.status_code == 404
    body = response.get_data(as_text=True)
    assert "This link is not valid or has expired" in body
    assert "Send me a new link" in body


def test_a_tampered_or_foreign_link_answers_the_same_404_as_a_made_up_one(
    admin, client, make_customer, open_invoice
):
    customer = make_customer()
    first, second = open_invoice(customer), open_invoice(customer)
    kid, payload, signature = path_of(first).rsplit("/", 1)[1].split(".")
    other_payload = path_of(second).rsplit("/", 1)[1].split(".")[1]
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for token in (
        f"{kid}.{payload}.{flipped}",
        f"{kid}.{other_payload}.{signature}",  # another invoice with this one's signature
        "k1.SU5WLTIwMjYtOTk5OTk5fjA.made-up",
        links.sign("INV-2099-000001", links.parse_keys(KEY)),  # valid, for no invoice
    ):
        _not_valid(client.get(f"/pay/{token}"))
        _not_valid(client.get(f"/pay/{token}/pdf"))
        assert client.get(f"/pay/{token}/status").status_code == 404


def test_an_old_key_works_while_it_is_kept_and_not_after(
    service_env, admin, client, make_customer, open_invoice
):
    invoice = open_invoice(make_customer())
    signed_by_old_key = path_of(invoice)

    rotated = create_app({**service_env, "HOSTED_LINK_KEYS": f"{ROTATED},{KEY}"})
    assert rotated.test_client().get(signed_by_old_key).status_code == 200
    shown = rotated.test_client().get(
        f"/v1/invoices/{invoice['id']}", headers={"Authorization": f"Bearer {admin.secret}"}
    )
    new_link = shown.get_json()["hosted_invoice_url"]
    assert "/pay/k2." in new_link

    dropped = create_app({**service_env, "HOSTED_LINK_KEYS": ROTATED})
    _not_valid(dropped.test_client().get(signed_by_old_key))


def test_a_link_expires_a_month_after_the_invoice_is_paid_and_a_new_one_can_be_asked_for(
    admin, client, paying_customer, open_invoice, run_jobs, mailbox
):
    customer = paying_customer()
    invoice = open_invoice(customer)
    run_jobs()
    assert client.get(path_of(invoice)).status_code == 200
    db.session.execute(
        update(Invoice)
        .where(Invoice.id == invoice["id"])
        .values(paid_at=clock.now() - timedelta(days=31))
    )
    db.session.commit()
    expired = client.get(path_of(invoice))
    _not_valid(expired)
    mailbox.handler.reset()

    token = path_of(invoice).rsplit("/", 1)[1]
    for address in ("someone@else.example", customer["email"]):
        answer = client.post(
            "/pay/new-link",
            data={"email": address, "token": token, "csrf_token": csrf_of(expired)},
        )
        assert answer.status_code == 200
        assert "If this address receives invoices from us" in answer.get_data(as_text=True)
        run_jobs()
    [resent] = mailbox.messages
    assert resent.rcpt_tos == (customer["email"],)
    text = resent.message.get_body(("plain",)).get_content()
    [fresh] = re.findall(r"https://billing\.example/pay/\S+", text)
    assert fresh != invoice["hosted_invoice_url"]
    assert client.get(urlsplit(fresh).path).status_code == 200
    assert "invoice.link_requested" in hosted_events(invoice["id"])


def test_a_form_posted_without_the_page_s_token_changes_nothing(
    client, paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer(), collection_method="send_invoice", days_until_due=30)
    refused = client.post(f"{path_of(invoice)}/pay")
    assert refused.status_code == 403
    assert attempts_of(invoice["id"]) == []
    forged = client.post(f"{path_of(invoice)}/pay", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert attempts_of(invoice["id"]) == []


def test_paying_with_the_saved_card_twice_charges_once(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(), collection_method="send_invoice", days_until_due=30)
    page = client.get(path_of(invoice))
    assert "Pay with saved card" in page.get_data(as_text=True)
    token = csrf_of(page)
    # A double click and a second tab: both posts arrive before the charge runs.
    for _ in range(2):
        answer = client.post(f"{path_of(invoice)}/pay", data={"csrf_token": token})
        assert answer.status_code == 303
    assert len(attempts_of(invoice["id"])) == 1
    run_jobs()
    # A reload that posts again once it is paid: refused, nothing charged.
    again = client.post(f"{path_of(invoice)}/pay", data={"csrf_token": token})
    assert again.status_code == 409
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    succeeded = [
        i for i in intents_for_invoice(stripe_client, invoice["id"]) if i.status == "succeeded"
    ]
    assert len(succeeded) == 1
    assert 'data-status="paid"' in client.get(path_of(invoice)).get_data(as_text=True)
    assert hosted_events(invoice["id"]).count("invoice.payment_requested") == 1


def _confirmed_setup(client: Any, invoice: dict[str, Any], stripe_client: Any, card: str) -> str:
    """What Stripe.js does on the page: a SetupIntent from this service, confirmed on
    Stripe with the card the customer typed."""
    page = client.get(path_of(invoice))
    answer = client.post(
        f"{path_of(invoice)}/card-setup",
        json={},
        headers={"X-CSRFToken": csrf_of(page), "Accept": "application/json"},
    )
    assert answer.status_code == 200, answer.get_json()
    secret = answer.get_json()["client_secret"]
    setup_id = secret.split("_secret_")[0]
    stripe_client.v1.setup_intents.confirm(
        setup_id,
        params={
            "client_secret": secret,
            "payment_method_data": {
                "type": "card",
                "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            },
        },
    )
    return setup_id


def test_a_new_card_confirmed_on_the_page_becomes_the_default_and_pays(
    admin, client, make_customer, open_invoice, run_jobs, stripe_client
):
    customer = make_customer()
    invoice = open_invoice(customer, collection_method="send_invoice", days_until_due=30)
    run_jobs()  # the customer exists on Stripe
    setup_id = _confirmed_setup(client, invoice, stripe_client, CARD_OK)
    page = client.get(path_of(invoice))
    saved = client.post(
        f"{path_of(invoice)}/card",
        json={"setup_intent": setup_id, "pay": True},
        headers={"X-CSRFToken": csrf_of(page), "Accept": "application/json"},
    )
    assert saved.status_code == 202, saved.get_json()
    assert saved.get_json()["state"] == "processing"
    run_jobs()
    shown = admin.get(f"/v1/customers/{customer['id']}").get_json()
    assert shown["default_payment_method"].startswith("pm_")
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    assert len(intents_for_invoice(stripe_client, invoice["id"])) == 1


def test_a_setup_that_stripe_did_not_confirm_or_of_another_customer_saves_nothing(
    admin, client, make_customer, open_invoice, run_jobs, stripe_client
):
    customer = make_customer()
    invoice = open_invoice(customer, collection_method="send_invoice", days_until_due=30)
    run_jobs()
    page = client.get(path_of(invoice))
    headers = {"X-CSRFToken": csrf_of(page), "Accept": "application/json"}
    unconfirmed = client.post(f"{path_of(invoice)}/card-setup", json={}, headers=headers)
    setup_id = unconfirmed.get_json()["client_secret"].split("_secret_")[0]
    refused = client.post(
        f"{path_of(invoice)}/card", json={"setup_intent": setup_id}, headers=headers
    )
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "card_not_saved"

    stranger = stripe_client.v1.customers.create(params={"name": "Someone else"})
    foreign = stripe_client.v1.setup_intents.create(params={"customer": stranger.id})
    stripe_client.v1.setup_intents.confirm(
        foreign.id,
        params={
            "payment_method_data": {
                "type": "card",
                "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        },
    )
    refused = client.post(
        f"{path_of(invoice)}/card", json={"setup_intent": foreign.id}, headers=headers
    )
    assert refused.status_code == 409
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["default_payment_method"] is None
    assert attempts_of(invoice["id"]) == []


def test_replacing_a_declined_card_retries_the_invoice_and_it_is_paid(
    admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = open_invoice(paying_customer(card=CARD_DECLINED_AFTER_ATTACH))
    run_jobs()
    page = client.get(path_of(invoice)).get_data(as_text=True)
    assert "The last payment was declined" in page
    setup_id = _confirmed_setup(client, invoice, stripe_client, CARD_OK)
    saved = client.post(
        f"{path_of(invoice)}/card",
        json={"setup_intent": setup_id, "pay": False},
        headers={
            "X-CSRFToken": csrf_of(client.get(path_of(invoice))),
            "Accept": "application/json",
        },
    )
    assert saved.status_code == 202, saved.get_json()
    run_jobs()
    assert admin.get(f"/v1/invoices/{invoice['id']}").get_json()["status"] == "paid"
    assert [i.status for i in intents_for_invoice(stripe_client, invoice["id"])].count(
        "succeeded"
    ) == 1
    assert "invoice.payment_method_saved" in hosted_events(invoice["id"])


def test_a_charge_that_needs_3d_secure_is_confirmed_on_the_page(
    client, paying_customer, open_invoice, run_jobs
):
    invoice = open_invoice(paying_customer(card=CARD_NEEDS_3DS))
    run_jobs()
    page = client.get(path_of(invoice)).get_data(as_text=True)
    assert "Confirm with your bank" in page
    [attempt] = attempts_of(invoice["id"])
    assert f'data-client-secret="{attempt.client_secret}"' in page
    status = client.get(f"{path_of(invoice)}/status").get_json()
    assert status == {
        "status": "open",
        "state": "requires_action",
        "payment_message": "Your bank asks you to confirm this payment.",
        "client_secret": attempt.client_secret,
    }


def test_requests_beyond_a_link_s_limit_are_refused(service_env, make_customer, open_invoice):
    invoice = open_invoice(make_customer())
    limited = create_app({**service_env, "HOSTED_LINK_RATE_LIMIT": "3 per minute"})
    client = limited.test_client()
    answers = [client.get(path_of(invoice)).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429]


def test_following_a_payment_and_loading_the_page_s_assets_use_up_no_link_s_budget(
    service_env, make_customer, open_invoice
):
    invoice = open_invoice(make_customer())
    limited = create_app({**service_env, "HOSTED_LINK_RATE_LIMIT": "2 per minute"})
    client = limited.test_client()
    for _ in range(5):
        assert client.get(f"{path_of(invoice)}/status").status_code == 200
        assert client.get("/pay/assets/hosted.css").status_code == 200
    assert [client.get(path_of(invoice)).status_code for _ in range(3)] == [200, 200, 429]


def test_after_a_hard_decline_only_a_new_card_is_offered(
    client, paying_customer, open_invoice, run_jobs
):
    invoice = open_invoice(paying_customer(card=CARD_DECLINED_AFTER_ATTACH))
    run_jobs()
    soft = client.get(path_of(invoice)).get_data(as_text=True)
    assert "The last payment was declined. The card was declined by the bank." in soft
    assert "Pay with saved card" in soft  # a soft decline may pass another time
    db.session.execute(
        update(ChargeAttempt)
        .where(ChargeAttempt.invoice_id == invoice["id"])
        .values(decline_code="expired_card")
    )
    db.session.commit()
    hard = client.get(path_of(invoice)).get_data(as_text=True)
    assert "The card has expired. Please pay with another card." in hard
    assert "Pay with saved card" not in hard and "Pay with this card" in hard


def test_an_invoice_that_cannot_yield_an_e_invoice_says_so_on_its_link(
    client, make_customer, open_invoice
):
    invoice = open_invoice(make_customer())
    answer = client.get(f"{path_of(invoice)}/einvoice?syntax=ubl")
    assert answer.status_code == 422
    body = answer.get_data(as_text=True)
    assert "This invoice has no e-invoice" in body and "The PDF has everything" in body
