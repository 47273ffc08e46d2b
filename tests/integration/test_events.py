"""The event log: an event exists exactly when its change committed, with the object as
the API shows it, a sequence that grows per object, and the customer keys' scoping."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.models import Customer, Event
from billing.platform.unit_of_work import transaction


def _events(admin: Any, **query: Any) -> list[dict[str, Any]]:
    response = admin.get("/v1/events", query_string={"limit": 100, **query})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def test_a_created_customer_is_an_event_showing_it_as_the_api_does(admin, make_customer):
    customer = make_customer()
    [event] = _events(admin, type="customer.created")
    assert event["data"]["object_type"] == "customer"
    shown = admin.get(f"/v1/customers/{customer['id']}").get_json()
    assert event["data"]["object"] == {**shown, "sync_job": None}
    assert event["customer"] == customer["id"]
    assert admin.get(f"/v1/events/{event['id']}").get_json() == event


def test_an_invoice_s_events_carry_growing_sequences_in_the_order_of_its_changes(
    admin, make_customer
):
    customer = make_customer()
    invoice = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": 1000}],
        },
    ).get_json()
    admin.post(f"/v1/invoices/{invoice['id']}/finalize")
    admin.post(f"/v1/invoices/{invoice['id']}/void")
    shown = _events(admin, object_id=invoice["id"])
    types = [e["type"] for e in reversed(shown)]  # the API lists newest first
    assert types == ["invoice.created", "invoice.finalized", "invoice.voided"]
    sequences = [e["sequence"] for e in reversed(shown)]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    assert shown[0]["data"]["object"]["status"] == "void"


def test_each_invoice_event_shows_the_invoice_as_the_response_to_its_change_did(
    admin, make_customer
):
    customer = make_customer()
    lines = [{"description": "Seats", "quantity": 2, "unit_amount": 1000, "tax_rate": "19"}]
    created = admin.post("/v1/invoices", json={"customer": customer["id"], "lines": lines})
    invoice_id = created.get_json()["id"]
    finalized = admin.post(f"/v1/invoices/{invoice_id}/finalize")
    voided = admin.post(f"/v1/invoices/{invoice_id}/void")
    shown = {e["type"]: e["data"]["object"] for e in _events(admin, object_id=invoice_id)}
    assert shown == {
        "invoice.created": created.get_json(),
        "invoice.finalized": finalized.get_json(),
        "invoice.voided": voided.get_json(),
    }
    # And as reading it back shows it: the response was not shaped apart from the rows.
    assert admin.get(f"/v1/invoices/{invoice_id}").get_json() == voided.get_json()


def test_a_change_that_rolls_back_leaves_no_event(app, admin, make_customer):
    customer = make_customer()
    before = db.session.scalar(select(db.func.count()).select_from(Event))
    with pytest.raises(RuntimeError), transaction() as session:
        row = session.get(Customer, customer["id"], with_for_update=True)
        assert row is not None
        row.name = "Renamed, then rolled back"
        events.record(session, EventType.CUSTOMER_UPDATED, row.id, row.id)
        raise RuntimeError("the change fails after recording its event")
    db.session.rollback()
    assert db.session.scalar(select(db.func.count()).select_from(Event)) == before
    # The next transaction of the same session does not inherit the forgotten event.
    with transaction():
        pass
    assert db.session.scalar(select(db.func.count()).select_from(Event)) == before


def test_a_refused_api_change_records_no_event(admin, make_customer):
    customer = make_customer()
    refused = admin.patch(f"/v1/customers/{customer['id']}", json={"currency": "nope"})
    assert refused.status_code in (400, 422)
    assert _events(admin, type="customer.updated") == []


def test_a_customer_key_sees_only_its_own_customer_s_events(admin, make_customer, customer_api):
    mine, theirs = make_customer(), make_customer()
    as_mine = customer_api(mine["id"])
    shown = as_mine.get("/v1/events").get_json()["data"]
    assert {e["customer"] for e in shown} == {mine["id"]}
    [their_event] = _events(admin, object_id=theirs["id"])
    assert as_mine.get(f"/v1/events/{their_event['id']}").status_code == 404


def test_events_are_filtered_by_type_object_and_time_and_paginated(admin, make_customer):
    first, second = make_customer(), make_customer()
    created = _events(admin, type="customer.created")
    assert [e["data"]["object"]["id"] for e in created] == [second["id"], first["id"]]
    page = admin.get("/v1/events", query_string={"limit": 1}).get_json()
    assert page["has_more"] is True
    rest = admin.get(
        "/v1/events", query_string={"limit": 100, "starting_after": page["data"][0]["id"]}
    ).get_json()["data"]
    assert page["data"][0]["id"] not in {e["id"] for e in rest}
    newest = created[0]["created"]
    assert _events(admin, created_gte=newest + 10) == []
    assert len(_events(admin, created_lte=newest + 10, type="customer.created")) == 2


def test_an_unknown_event_type_filter_is_refused_with_a_code(admin):
    response = admin.get("/v1/events", query_string={"type": "invoice.exploded"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"]


def test_events_older_than_the_retention_are_pruned(app, admin, make_customer):
    from datetime import timedelta

    make_customer()
    db.session.execute(db.text("UPDATE events SET created_at = now() - interval '400 days'"))
    db.session.commit()
    make_customer()
    assert events.prune(timedelta(days=365)) == 1
    assert len(_events(admin)) == 1


def _send_invoice(admin: Any, customer: dict[str, Any]) -> dict[str, Any]:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Annual licence", "quantity": 1, "unit_amount": 12000}],
        },
    ).get_json()
    return admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()  # type: ignore[no-any-return]


def test_a_sent_email_is_an_event_showing_it_as_its_invoice_does(admin, make_customer, run_jobs):
    invoice = _send_invoice(admin, make_customer())
    run_jobs()
    [event] = _events(admin, type="email.sent")
    [shown] = admin.get(f"/v1/invoices/{invoice['id']}").get_json()["emails"]
    assert event["data"]["object"] == {**shown, "invoice": invoice["id"], "subscription": None}


def test_an_email_refused_for_good_is_an_event_and_a_deferral_is_not(
    admin, make_customer, run_jobs, mailbox
):
    deferred = make_customer(email="slow@globex.example")
    mailbox.handler.refuse("slow@globex.example", "451 4.7.1 Greylisted, try later", times=1)
    refused = make_customer(email="gone@globex.example")
    mailbox.handler.refuse("gone@globex.example", "550 5.1.1 No such user")
    _send_invoice(admin, deferred)
    _send_invoice(admin, refused)
    run_jobs()
    [failed] = _events(admin, type="email.failed")
    assert failed["customer"] == refused["id"]
    assert failed["data"]["object"]["status"] == "failed"
    assert "550" in failed["data"]["object"]["error"]
    [sent] = _events(admin, type="email.sent")
    assert sent["customer"] == deferred["id"] and sent["data"]["object"]["attempts"] == 2
