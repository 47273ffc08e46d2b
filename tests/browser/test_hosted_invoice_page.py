"""The hosted invoice page, as the customer uses it: opened from the invoice's email,
documents downloaded, paid with a new card (with and without 3-D Secure) or the saved one,
a declined card replaced, and a link that no longer holds.

Every outcome is checked where it is independent of the page: the invoice through the API,
and what was charged on the Stripe emulator itself. Each main state is screenshotted at
phone and desktop widths and checked with axe-core.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import create_engine, text

from tests.browser.conftest import assert_accessible
from tests.conftest import CARD_DECLINED_AFTER_ATTACH, CARD_NEEDS_3DS, CARD_OK, intents_for_invoice
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

# Outcomes that pass through workers, Stripe and its webhooks: generous, to hold on a
# machine half as fast; the tests wait for outcomes and never assert on how long they took.
OUTCOME_MS = 120_000
OUTCOME_S = OUTCOME_MS / 1000
NOT_VALID = "This link is not valid or has expired"
NEW_LINK_ANSWER = "If this address receives invoices from us, we have sent it a new link."
LINK = re.compile(r"https?://[^\s\"'<>]+/pay/[A-Za-z0-9_.~-]+")


# -- the customer and the invoice, made through the API ------------------------------------


def _customer(stack: Any, http: Any, email: str) -> dict[str, Any]:
    customer = http.post(
        f"{stack.url}/v1/customers",
        json={
            "name": "Acme GmbH",
            "email": email,
            "currency": "eur",
            "address": {
                "line1": "Hauptstraße 5",
                "postal_code": "10115",
                "city": "Berlin",
                "country": "DE",
            },
        },
        timeout=30,
    ).json()
    wait_for(
        lambda: http.get(f"{stack.url}/v1/customers/{customer['id']}", timeout=10).json()[
            "stripe_customer_id"
        ],
        timeout=OUTCOME_S,
    )
    return customer  # type: ignore[no-any-return]


def _save_card(stack: Any, http: Any, emulator: Any, customer: dict[str, Any], card: str) -> None:
    pm = emulator.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    response = http.post(
        f"{stack.url}/v1/customers/{customer['id']}/payment_method",
        json={"payment_method": pm.id},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def _invoice(
    stack: Any, http: Any, customer: dict[str, Any], amount: int = 4200, **fields: Any
) -> dict[str, Any]:
    draft = http.post(
        f"{stack.url}/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": amount}],
            **fields,
        },
        timeout=30,
    )
    assert draft.status_code == 200, draft.text
    finalized = http.post(f"{stack.url}/v1/invoices/{draft.json()['id']}/finalize", timeout=60)
    assert finalized.status_code == 200, finalized.text
    return finalized.json()  # type: ignore[no-any-return]


def _sent_invoice(stack: Any, http: Any, customer: dict[str, Any], **fields: Any) -> dict:
    """An invoice the customer pays themselves (no automatic charge)."""
    return _invoice(
        stack, http, customer, collection_method="send_invoice", days_until_due=14, **fields
    )


def _get(stack: Any, http: Any, invoice_id: str) -> dict[str, Any]:
    return http.get(f"{stack.url}/v1/invoices/{invoice_id}", timeout=10).json()  # type: ignore[no-any-return]


def _hosted_url(stack: Any, http: Any, invoice: dict[str, Any]) -> str:
    url = invoice.get("hosted_invoice_url") or _get(stack, http, invoice["id"]).get(
        "hosted_invoice_url"
    )
    assert url, f"invoice {invoice['id']} has no hosted_invoice_url"
    assert urlsplit(url).path.startswith("/pay/"), url
    return str(url)


def _wait_paid(stack: Any, http: Any, invoice_id: str) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (i := _get(stack, http, invoice_id))["status"] == "paid" and i, timeout=OUTCOME_S
    )


def _succeeded_intents(emulator: Any, invoice_id: str) -> list[Any]:
    return [i for i in intents_for_invoice(emulator, invoice_id) if i.status == "succeeded"]


def _text_of(message: Any) -> str:
    """Every text part of an email (plain and HTML), attachments aside."""
    return "\n".join(
        part.get_content()
        for part in message.walk()
        if part.get_content_maintype() == "text" and not part.is_attachment()
    )


def _to(smtp_server: Any, address: str) -> list[Any]:
    """The messages to `address` that carry a link to a hosted page, oldest first."""
    return [
        m.message
        for m in smtp_server.messages
        if address in m.rcpt_tos and LINK.search(_text_of(m.message))
    ]


def _messages_with(smtp_server: Any, needle: str) -> list[Any]:
    return [m.message for m in smtp_server.messages if needle in _text_of(m.message)]


# -- the page -------------------------------------------------------------------------------


def _status(page: Page) -> Any:
    return page.locator("[data-testid=invoice-status]")


def _expect_status(page: Page, status: str) -> None:
    expect(_status(page)).to_have_attribute("data-status", status, timeout=OUTCOME_MS)


def _type_card(page: Page, number: str) -> None:
    """Types a card into the Stripe card Element (the emulator's renders plain inputs)."""
    element = page.locator("#card-element")
    for field, value in (
        ("number", number),
        ("exp_month", "12"),
        ("exp_year", "30"),  # two digits, as on the card
        ("cvc", "123"),
        ("postal_code", "10115"),
    ):
        element.locator(f"input[placeholder={field}]").fill(value)


def _complete_authentication(page: Page, timeout_ms: float = OUTCOME_MS) -> None:
    button = page.get_by_role("button", name="Complete authentication")
    button.wait_for(state="visible", timeout=timeout_ms)
    button.click()


def _check(page: Page, screenshot: Any, state: str) -> None:
    """Screenshots the page's state at both widths; fails on a serious accessibility
    violation in it."""
    screenshot(page, state)
    assert_accessible(page)


_WATCH_PAYMENT_MESSAGE = """(noteNow) => {
    const node = document.querySelector('[data-testid=payment-message]');
    if (!node) return;
    const note = () => {
        const text = node.textContent.trim();
        if (text) window.notePaymentMessage(text);
    };
    if (noteNow) note();
    new MutationObserver(note).observe(node, {childList: true, characterData: true, subtree: true});
}"""


def _record_payment_messages(page: Page) -> list[str]:
    """Keeps every text the payment message shows from now on, across the reloads the
    page makes as the payment settles (progress may be brief)."""
    seen: list[str] = []
    page.expose_function("notePaymentMessage", lambda text: seen.append(text))
    page.add_init_script(
        f"document.addEventListener('DOMContentLoaded', () => ({_WATCH_PAYMENT_MESSAGE})(true));"
    )
    page.evaluate(_WATCH_PAYMENT_MESSAGE, False)
    return seen


def _one_payment_on_stripe(emulator: Any, invoice: dict[str, Any]) -> Any:
    """Exactly one PaymentIntent succeeded on the emulator for the invoice, for its total."""
    succeeded = wait_for(lambda: _succeeded_intents(emulator, invoice["id"]), timeout=OUTCOME_S)
    assert len(succeeded) == 1, [(i.id, i.status) for i in succeeded]
    assert succeeded[0].amount == invoice["total"]
    return succeeded[0]


# -- the tests ------------------------------------------------------------------------------


def test_the_invoice_email_opens_the_page_with_its_documents(
    stack, http, smtp_server, page, screenshot
):
    customer = _customer(stack, http, "docs@acme.example")
    # A buyer reference: an e-invoice (BT-10) needs one.
    invoice = _sent_invoice(stack, http, customer, buyer_reference="PO-4711")
    url = _hosted_url(stack, http, invoice)
    emails = wait_for(lambda: _messages_with(smtp_server, url), timeout=OUTCOME_S)
    assert any(invoice["number"] in str(m["Subject"]) for m in emails)
    # The link as the customer reads it: the whole address, not a part of a longer one.
    assert url in {match.group(0) for match in LINK.finditer(_text_of(emails[0]))}

    response = page.goto(url)
    assert response is not None and response.status == 200
    expect(page.locator("h1")).to_contain_text(invoice["number"])
    expect(_status(page)).to_have_attribute("data-status", "open")
    amount_due = page.locator("[data-testid=amount-due]").inner_text()
    assert "42.00" in amount_due, amount_due
    expect(page.locator("table", has=page.locator("caption", has_text="Payments"))).to_be_visible()
    _check(page, screenshot, "open")

    pdf = _follow(page, "Download PDF")
    assert pdf.content_type == "application/pdf", pdf.content_type
    assert pdf.body.startswith(b"%PDF"), pdf.body[:20]
    cii = _follow(page, "Download e-invoice (CII)")
    assert "xml" in cii.content_type, cii.content_type
    assert b"CrossIndustryInvoice" in cii.body
    assert invoice["number"].encode() in cii.body
    ubl = _follow(page, "Download e-invoice (UBL)")
    assert "xml" in ubl.content_type, ubl.content_type
    assert b"<Invoice" in ubl.body or b":Invoice" in ubl.body


def _visible_text(html: str) -> str:
    body = html.split("<body", 1)[-1]
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())[:800]


@dataclass(frozen=True)
class Fetched:
    content_type: str
    body: bytes


def _follow(page: Page, name: str, timeout: float = OUTCOME_S) -> Fetched:
    """Follows one of the page's links as the browser does (its address resolved against
    the page's, with the page's cookies), waiting while the document is being prepared
    (202): the PDF is rendered by a worker after the invoice is finalized."""
    link = page.get_by_role("link", name=name)
    expect(link).to_be_visible()
    href = link.get_attribute("href")
    assert href, name
    address = urljoin(page.url, href)
    deadline = time.monotonic() + timeout
    while True:
        answer = page.request.get(address)
        if answer.status != 202 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert answer.status == 200, (name, answer.status, _visible_text(answer.text()))
    content_type = answer.headers.get("content-type", "").split(";")[0].strip()
    return Fetched(content_type, answer.body())


def test_a_new_card_typed_into_the_card_element_pays_the_invoice(
    stack, http, emulator, page, screenshot
):
    customer = _customer(stack, http, "new-card@acme.example")
    invoice = _sent_invoice(stack, http, customer)
    page.goto(_hosted_url(stack, http, invoice))
    expect(page.get_by_role("button", name="Pay with saved card")).to_have_count(0)
    _type_card(page, CARD_OK)
    _check(page, screenshot, "card-typed")
    messages = _record_payment_messages(page)

    page.get_by_role("button", name="Pay with this card").click()
    _expect_status(page, "paid")
    assert messages, "the page showed no progress while paying"
    _check(page, screenshot, "paid")
    page.reload()
    expect(_status(page)).to_have_attribute("data-status", "paid")
    expect(page.get_by_role("button", name="Pay with this card")).to_have_count(0)

    paid = _wait_paid(stack, http, invoice["id"])
    assert paid["amount_due"] == 0
    _one_payment_on_stripe(emulator, paid)
    assert len(intents_for_invoice(emulator, invoice["id"])) == 1


def test_a_card_that_needs_3d_secure_pays_once_authenticated(
    stack, http, emulator, page, screenshot
):
    customer = _customer(stack, http, "three-d-secure@acme.example")
    invoice = _sent_invoice(stack, http, customer)
    page.goto(_hosted_url(stack, http, invoice))
    _type_card(page, CARD_NEEDS_3DS)
    page.get_by_role("button", name="Pay with this card").click()

    complete = page.get_by_role("button", name="Complete authentication")
    confirm = page.get_by_role("button", name="Confirm with your bank")
    # Saving the card may itself ask for authentication first (as Stripe may, on setup).
    expect(complete.or_(confirm).first).to_be_visible(timeout=OUTCOME_MS)
    if complete.is_visible():
        screenshot(page, "card-setup-authentication")
        complete.click()
    expect(confirm).to_be_visible(timeout=OUTCOME_MS)
    _expect_status_now(page, "open")
    _check(page, screenshot, "needs-authentication")

    confirm.click()
    expect(complete).to_be_visible(timeout=OUTCOME_MS)
    screenshot(page, "authentication-modal")
    complete.click()
    _expect_status(page, "paid")
    _check(page, screenshot, "paid")

    paid = _wait_paid(stack, http, invoice["id"])
    _one_payment_on_stripe(emulator, paid)


def _expect_status_now(page: Page, status: str) -> None:
    expect(_status(page)).to_have_attribute("data-status", status)


def test_a_new_card_saved_after_a_hard_decline_makes_the_retry_pay(
    stack, http, emulator, database_url, page, screenshot
):
    customer = _customer(stack, http, "declined@acme.example")
    _save_card(stack, http, emulator, customer, CARD_DECLINED_AFTER_ATTACH)
    invoice = _invoice(stack, http, customer)  # charged automatically, and declined
    declined = wait_for(
        lambda: (
            (i := _get(stack, http, invoice["id"]))["payment_attempts"]
            and all(a["status"] == "failed" for a in i["payment_attempts"])
            and i
        ),
        timeout=OUTCOME_S,
    )
    assert declined["status"] == "open"
    assert not _succeeded_intents(emulator, invoice["id"])
    # The emulator declines only with card_declined (soft: retried on schedule): the bank's
    # answer is made an expired card here, a hard decline, as Stripe would give it.
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE charge_attempts SET decline_code = 'expired_card' WHERE invoice_id = :i"),
            {"i": invoice["id"]},
        )
    engine.dispose()

    page.goto(_hosted_url(stack, http, invoice))
    _expect_status_now(page, "open")
    _check(page, screenshot, "declined")
    _type_card(page, CARD_OK)
    messages = _record_payment_messages(page)
    page.get_by_role("button", name="Save this card").click()
    _expect_status(page, "paid")
    assert messages, "the page showed no progress after saving the card"
    _check(page, screenshot, "paid")

    paid = _wait_paid(stack, http, invoice["id"])
    _one_payment_on_stripe(emulator, paid)
    assert [a["status"] for a in paid["payment_attempts"]].count("succeeded") == 1


def test_paying_with_the_saved_card_twice_charges_once(
    stack, http, emulator, page, new_page, screenshot
):
    customer = _customer(stack, http, "saved-card@acme.example")
    _save_card(stack, http, emulator, customer, CARD_OK)
    invoice = _sent_invoice(stack, http, customer)
    url = _hosted_url(stack, http, invoice)
    page.goto(url)
    second_tab = new_page()
    second_tab.goto(url)
    pay = page.get_by_role("button", name="Pay with saved card")
    expect(pay).to_be_visible()
    _check(page, screenshot, "saved-card")

    pay.dblclick()
    page.wait_for_load_state()
    # The second tab still shows the button: the customer pays there too, and the browser
    # posts the form once more (as a reload that re-posts it would).
    stale = second_tab.get_by_role("button", name="Pay with saved card")
    expect(stale).to_be_visible()
    reposted = second_tab.evaluate(
        """async () => {
            const form = document.getElementById('pay-saved-form')
                || document.querySelector('form[action$="/pay"]');
            const answer = await fetch(form.action, {method: 'POST', body: new FormData(form)});
            return answer.status;
        }"""
    )
    assert reposted < 500, reposted
    stale.click()
    second_tab.wait_for_load_state()
    assert second_tab.locator("body").inner_text()

    _expect_status(page, "paid")
    page.reload()
    _expect_status_now(page, "paid")
    _check(page, screenshot, "paid")
    paid = _wait_paid(stack, http, invoice["id"])
    assert len(paid["payment_attempts"]) == 1, paid["payment_attempts"]
    _one_payment_on_stripe(emulator, paid)
    assert len(intents_for_invoice(emulator, invoice["id"])) == 1


def _expired_link(stack: Any, invoice: dict[str, Any], url: str) -> str:
    """The invoice's link, signed with the stack's key but expired an hour ago; a tampered
    one if the signer cannot be asked for an expiry."""
    try:
        from billing.hosted import links
    except ImportError:
        return _tampered(url)
    keys = links.parse_keys(stack.env["HOSTED_LINK_KEYS"])
    token = links.sign(invoice["number"], keys, expires_at=int(time.time()) - 3600)
    return f"{stack.url}/pay/{token}"


def _tampered(url: str) -> str:
    """The link with its signature's last characters changed."""
    return url[:-2] + ("AA" if not url.endswith("AA") else "BB")


def test_an_expired_link_offers_a_new_one_without_telling_who_is_known(
    stack, http, smtp_server, page, screenshot
):
    customer = _customer(stack, http, "expired@acme.example")
    invoice = _sent_invoice(stack, http, customer)
    url = _hosted_url(stack, http, invoice)
    expired = _expired_link(stack, invoice, url)
    tampered = _tampered(url)

    wait_for(lambda: _to(smtp_server, customer["email"]), timeout=OUTCOME_S)
    before = len(_to(smtp_server, customer["email"]))  # the invoice's own email
    answers = {}
    for label, link, address in (
        ("known", expired, customer["email"]),
        ("unknown", expired, "someone@elsewhere.example"),
        ("tampered", tampered, customer["email"]),
    ):
        response = page.goto(link)
        assert response is not None and response.status == 404, (label, response)
        expect(page.get_by_role("heading", name=NOT_VALID)).to_be_visible()
        assert invoice["number"] not in page.content()
        if label == "known":
            _check(page, screenshot, "not-valid")
        page.get_by_label("Email address").fill(address)
        page.get_by_role("button", name="Send me a new link").click()
        expect(page.get_by_text(NEW_LINK_ANSWER)).to_be_visible()
        answers[label] = page.locator("main, body").first.inner_text()
        if label == "known":
            _check(page, screenshot, "new-link-answer")
    assert len(set(answers.values())) == 1, answers

    # Only the known address got a new link, and it opens the invoice.
    new_links = wait_for(lambda: _to(smtp_server, customer["email"])[before:], timeout=OUTCOME_S)
    assert not [m for m in smtp_server.messages if "someone@elsewhere.example" in m.rcpt_tos]
    fresh = next(LINK.finditer(_text_of(new_links[0]))).group(0)
    response = page.goto(fresh)
    assert response is not None and response.status == 200
    expect(page.locator("h1")).to_contain_text(invoice["number"])
