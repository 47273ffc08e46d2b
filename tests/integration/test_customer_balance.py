import threading
from typing import Any

from sqlalchemy import func, select

from billing.extensions import db
from billing.models import CustomerBalanceTransaction, Event
from tests.conftest import intents_for_invoice


def _adjust(admin, customer_id, amount, description="goodwill", **headers) -> Any:
    return admin.post(
        f"/v1/customers/{customer_id}/balance_transactions",
        json={"amount": amount, "description": description},
        headers=headers or None,
    )


def _draft(admin, customer, amount) -> dict[str, Any]:
    return admin.post(  # type: ignore[no-any-return]
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": amount}],
        },
    ).get_json()


def test_an_admin_adjusts_a_balance_with_a_reason_and_each_transaction_keeps_the_balance_after(
    admin, make_customer
):
    customer = make_customer()
    first = _adjust(admin, customer["id"], 5000, "migrated credit", **{"Idempotency-Key": "k1"})
    assert first.status_code == 200, first.get_json()
    replay = _adjust(admin, customer["id"], 5000, "migrated credit", **{"Idempotency-Key": "k1"})
    assert replay.get_json() == first.get_json()
    assert _adjust(admin, customer["id"], -1500, "billing error").status_code == 200
    listed = admin.get(f"/v1/customers/{customer['id']}/balance_transactions").get_json()["data"]
    assert [(t["type"], t["amount"], t["balance_after"], t["description"]) for t in listed] == [
        ("adjustment", -1500, 3500, "billing error"),
        ("adjustment", 5000, 5000, "migrated credit"),
    ]
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["balance"] == 3500
    events = db.session.scalars(
        select(Event.type).where(
            Event.customer_id == customer["id"], Event.type.like("customer_b%")
        )
    ).all()
    assert events == ["customer_balance_transaction.created"] * 2


def test_a_balance_never_goes_below_zero_and_a_refused_adjustment_changes_nothing(
    admin, make_customer
):
    customer = make_customer()
    _adjust(admin, customer["id"], 1000)
    refused = _adjust(admin, customer["id"], -1001)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "balance_insufficient"
    assert _adjust(admin, customer["id"], 0).status_code == 422
    assert _adjust(admin, customer["id"], 10, "   ").status_code in (400, 422)
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["balance"] == 1000
    assert db.session.scalar(select(func.count()).select_from(CustomerBalanceTransaction)) == 1


def test_a_customer_key_reads_its_balance_but_cannot_adjust_it(admin, make_customer, customer_api):
    customer, other = make_customer(), make_customer()
    _adjust(admin, customer["id"], 700)
    own = customer_api(customer["id"])
    assert (
        len(own.get(f"/v1/customers/{customer['id']}/balance_transactions").get_json()["data"]) == 1
    )
    assert _adjust(own, customer["id"], 100).status_code == 403
    assert own.get(f"/v1/customers/{other['id']}/balance_transactions").status_code == 404


def test_finalization_applies_the_balance_before_charging_only_the_rest(
    admin, paying_customer, run_jobs, stripe_client
):
    customer = paying_customer()
    _adjust(admin, customer["id"], 3000)
    draft = _draft(admin, customer, 5000)
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    assert (invoice["balance_applied"], invoice["amount_due"]) == (3000, 2000)
    assert [a["amount"] for a in invoice["payment_attempts"]] == [2000]
    run_jobs()
    [intent] = intents_for_invoice(stripe_client, invoice["id"])
    assert intent.amount == 2000
    after = admin.get(f"/v1/invoices/{invoice['id']}").get_json()
    assert (after["status"], after["amount_paid"], after["amount_due"]) == ("paid", 2000, 0)
    [applied, _] = admin.get(f"/v1/customers/{customer['id']}/balance_transactions").get_json()[
        "data"
    ]
    assert (applied["type"], applied["amount"], applied["balance_after"], applied["invoice"]) == (
        "applied_to_invoice",
        -3000,
        0,
        invoice["id"],
    )


def test_an_invoice_the_balance_covers_is_paid_at_once_with_nothing_charged(
    admin, paying_customer, run_jobs, stripe_client
):
    customer = paying_customer()
    _adjust(admin, customer["id"], 8000)
    invoice = admin.post(f"/v1/invoices/{_draft(admin, customer, 5000)['id']}/finalize").get_json()
    assert (invoice["status"], invoice["balance_applied"], invoice["payment_attempts"]) == (
        "paid",
        5000,
        [],
    )
    run_jobs()
    assert intents_for_invoice(stripe_client, invoice["id"]) == []
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["balance"] == 3000


def test_voiding_an_open_invoice_returns_the_balance_it_took(admin, make_customer):
    customer = make_customer()
    _adjust(admin, customer["id"], 1000)
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": 5000}],
        },
    ).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    assert invoice["balance_applied"] == 1000
    assert admin.post(f"/v1/invoices/{invoice['id']}/void").status_code == 200
    types = [
        (t["type"], t["amount"], t["balance_after"])
        for t in admin.get(f"/v1/customers/{customer['id']}/balance_transactions").get_json()[
            "data"
        ]
    ]
    assert types[:2] == [("invoice_voided", 1000, 1000), ("applied_to_invoice", -1000, 0)]


def test_concurrent_finalizations_apply_the_balance_once(app, admin, make_customer):
    from billing.invoicing import invoices

    customer = make_customer()
    _adjust(admin, customer["id"], 5000)
    # Two invoices of the same customer, each finalized twice at the same time.
    drafts = [_draft(admin, customer, 4000)["id"] for _ in range(2)]
    db.session.remove()
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def finalize(invoice_id: str) -> None:
        with app.app_context():
            barrier.wait()
            try:
                invoices.finalize_invoice(invoice_id)
                outcomes.append("finalized")
            except Exception as exc:  # noqa: BLE001
                outcomes.append(type(exc).__name__)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=finalize, args=(i,)) for i in drafts for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["InvalidStateTransition"] * 2 + ["finalized"] * 2
    shown = [admin.get(f"/v1/invoices/{i}").get_json() for i in drafts]
    assert sorted(i["balance_applied"] for i in shown) == [1000, 4000]
    applied = db.session.scalars(
        select(CustomerBalanceTransaction.amount).where(
            CustomerBalanceTransaction.type == "applied_to_invoice"
        )
    ).all()
    assert sorted(applied) == [-4000, -1000]
    assert admin.get(f"/v1/customers/{customer['id']}").get_json()["balance"] == 0
