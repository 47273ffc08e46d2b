"""Reading invoices takes a fixed number of statements, however long the page and whatever
each invoice carries (lines, charge attempts, refunds, emails, documents, dunning), and
answers exactly what the response schema dumps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from itertools import cycle
from typing import Any

import pytest
from sqlalchemy import event

from billing.extensions import db
from billing.models import (
    ChargeAttempt,
    DunningStepRecord,
    EmailDelivery,
    Invoice,
    InvoiceDocument,
    InvoiceLine,
    Refund,
)
from billing.platform import clock
from billing.views import schemas

KINDS = ("draft", "dunning", "paid", "sent", "void")
# Auth, the page, its lines, its charge attempts; refunds, emails, documents; and the
# dunning facts with their recorded steps: each read once for the whole page.
PAGE_STATEMENTS = 9


@contextmanager
def statements() -> Iterator[list[str]]:
    """The statements sent meanwhile; without the PREPARE a prebuilt statement sends once
    on each pooled connection (which a request gets is chance)."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("PREPARE "):
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def _invoice(customer_id: str, kind: str, number: int, lines: int = 3) -> str:
    """An invoice of the given kind with its history, written straight to the tables."""
    now = clock.now()
    invoice = Invoice(
        customer_id=customer_id,
        currency="eur",
        collection_method="send_invoice" if kind == "sent" else "charge_automatically",
        metadata_={"order": str(number), "note": "Größe ✓"},
        description=f"Invoice {number}",
        status={"dunning": "open", "sent": "open"}.get(kind, kind),
        number=None if kind == "draft" else f"TEST-{number:06d}",
        finalized_at=None if kind == "draft" else now,
    )
    subtotal = tax = 0
    for n in range(lines):
        rate = (Decimal("19.0000"), Decimal("7.7000"), Decimal(0))[n % 3]
        amount = (n + 1) * 1000
        line_tax = int(amount * rate / 100)
        invoice.lines.append(
            InvoiceLine(
                description=f"Line {n}",
                quantity=n + 1,
                unit_amount=1000,
                tax_rate=rate,
                amount=amount,
                tax=line_tax,
            )
        )
        subtotal, tax = subtotal + amount, tax + line_tax
    invoice.subtotal, invoice.tax, invoice.total = subtotal, tax, subtotal + tax
    if kind == "sent":
        invoice.due_date = (now + timedelta(days=30)).date()
    if kind == "void":
        invoice.voided_at = now
    if kind == "paid":
        invoice.amount_paid, invoice.amount_refunded, invoice.paid_at = invoice.total, 100, now
    if kind == "dunning":
        invoice.dunning_started_on = clock.today() - timedelta(days=1)
    db.session.add(invoice)
    db.session.flush()

    def attempt(status: str, **fields: Any) -> ChargeAttempt:
        made = ChargeAttempt(
            invoice_id=invoice.id,
            ledger_key=f"test:{invoice.id}:{status}",
            status=status,
            source="automatic",
            amount=invoice.total or 1,
            currency="eur",
            payment_method="pm_test",
            **fields,
        )
        db.session.add(made)
        return made

    if kind == "dunning":
        attempt("failed", decline_code="insufficient_funds", failure_message="declined")
        db.session.add(
            DunningStepRecord(
                invoice_id=invoice.id,
                step="retry:0",
                action="retry_charge",
                status="skipped",
                reason="test",
                taken_on=clock.today(),
            )
        )
    if kind == "paid":
        paid = attempt("succeeded", stripe_payment_intent_id=f"pi_{invoice.id}", finished_at=now)
        db.session.flush()
        db.session.add(
            Refund(
                invoice_id=invoice.id,
                charge_attempt_id=paid.id,
                ledger_key=f"test:{invoice.id}:refund",
                amount=100,
                currency="eur",
                reason="goodwill",
            )
        )
    if kind in ("dunning", "paid"):
        db.session.add(
            EmailDelivery(
                kind="invoice_issued",
                invoice_id=invoice.id,
                occasion="issued",
                recipient="billing@acme.example",
                ledger_key=f"test:{invoice.id}:email",
                message_id=f"<{invoice.id}@test>",
            )
        )
        for version in (1, 2):
            db.session.add(
                InvoiceDocument(
                    invoice_id=invoice.id,
                    version=version,
                    invoice_status=invoice.status,
                    sha256=f"{version}{invoice.id}".ljust(64, "0")[:64],
                    size=1000 + version,
                    storage="postgres",
                    storage_key=f"{invoice.id}/{version}.pdf",
                    template_version="test",
                    renderer_version="test",
                    source_fingerprint="test",
                )
            )
    db.session.commit()
    return invoice.id


@pytest.fixture
def invoices(make_customer) -> list[str]:
    """Fifty invoices, oldest first, the five kinds taking turns: every page of five or
    more shows each kind."""
    customer = make_customer()
    kinds = cycle(KINDS)
    return [_invoice(customer["id"], next(kinds), n) for n in range(50)]


def _as_schema_dumps_it(body: dict[str, Any]) -> str:
    return json.dumps(schemas.InvoiceOut.model_validate(body).model_dump(mode="json"))


def test_a_page_of_fifty_takes_as_many_statements_as_a_page_of_five(admin, invoices):
    with statements() as five:
        assert len(admin.get("/v1/invoices?limit=5").get_json()["data"]) == 5
    with statements() as fifty:
        assert len(admin.get("/v1/invoices?limit=50").get_json()["data"]) == 50
    assert len(five) == len(fifty) == PAGE_STATEMENTS, fifty


def test_a_page_of_drafts_reads_no_history(admin, invoices):
    with statements() as seen:
        page = admin.get("/v1/invoices?status=draft&limit=10").get_json()
    assert {i["status"] for i in page["data"]} == {"draft"}
    # Auth, the page, its lines, its charge attempts.
    assert len(seen) == 4, seen


@pytest.mark.parametrize("kind", KINDS)
def test_one_invoice_takes_the_same_statements_however_much_it_carries(admin, make_customer, kind):
    customer = make_customer()
    short, long = _invoice(customer["id"], kind, 1, lines=1), _invoice(customer["id"], kind, 2, 40)
    with statements() as for_short:
        assert len(admin.get(f"/v1/invoices/{short}").get_json()["lines"]["data"]) == 1
    with statements() as for_long:
        assert len(admin.get(f"/v1/invoices/{long}").get_json()["lines"]["data"]) == 40
    assert len(for_short) == len(for_long), for_long
    # Auth, the invoice with its lines, its charge attempts; then what its kind can have.
    history = {"draft": 0, "sent": 2, "void": 2, "paid": 3, "dunning": 4}[kind]
    assert len(for_long) == 3 + history, for_long


def test_a_listed_or_shown_invoice_is_what_its_schema_dumps(admin, invoices, customer_api):
    page = admin.get("/v1/invoices?limit=10").get_json()
    assert {i["status"] for i in page["data"]} == {"draft", "open", "paid", "void"}
    for listed in page["data"]:
        assert json.dumps(listed) == _as_schema_dumps_it(listed)
        assert admin.get(f"/v1/invoices/{listed['id']}").get_json() == listed
    dunning = next(i for i in page["data"] if i["next_payment_attempt"] is not None)
    assert [e["kind"] for e in dunning["emails"]] == ["invoice_issued"]
    assert dunning["document"]["version"] == 2
    assert dunning["payment_attempts"][0]["decline_code"] == "insufficient_funds"
    paid = next(i for i in page["data"] if i["status"] == "paid")
    assert [r["amount"] for r in paid["refunds"]] == [100]
    assert {t["tax_rate"] for t in paid["total_tax_amounts"]} == {"19", "7.7", "0"}
    own = customer_api(page["data"][0]["customer"])
    assert own.get(f"/v1/invoices/{page['data'][0]['id']}").get_json() == page["data"][0]
