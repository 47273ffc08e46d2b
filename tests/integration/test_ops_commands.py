"""The operators' commands against real PostgreSQL, Redis, the Stripe emulator and an SMTP
server: what each prints, what it changes, and its exit code."""

from __future__ import annotations

import json
import re
import shutil
import types
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from billing.adapters.broker import queue_keys
from billing.extensions import db
from billing.models import InvoiceDocument, LedgerEntry, OutboxJob
from tests.conftest import intents_for_invoice
from tests.support.webhooks import event, stripe_signature


def _run(app, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=list(args))
    db.session.rollback()  # see what the command committed
    return result


def _invoice(admin, invoice_id: str) -> dict[str, Any]:
    return admin.get(f"/v1/invoices/{invoice_id}").get_json()  # type: ignore[no-any-return]


def _paid_invoice(admin, paying_customer, open_invoice, run_jobs) -> dict[str, Any]:
    invoice = open_invoice(paying_customer())
    run_jobs()
    paid = _invoice(admin, invoice["id"])
    assert paid["status"] == "paid"
    return paid


def _charge_again_on_stripe(stripe_client, invoice_id: str) -> Any:
    """A second succeeded PaymentIntent for the invoice, made on the emulator itself with
    the first one's metadata: the double charge the service exists to prevent."""
    [first] = intents_for_invoice(stripe_client, invoice_id)
    return stripe_client.v1.payment_intents.create(
        params={
            "amount": first.amount,
            "currency": first.currency,
            "customer": first.customer,
            "payment_method": first.payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": first.metadata.to_dict(),
        }
    )


def _duplicates_found() -> float:
    return REGISTRY.get_sample_value("billing_duplicate_charges_found_total") or 0.0


# --- reconcile ----------------------------------------------------------------------------


def test_reconcile_is_clean_and_exits_0_when_every_payment_is_recorded_once(
    app, admin, paying_customer, open_invoice, run_jobs
):
    _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    result = _run(app, "reconcile")
    assert result.exit_code == 0, result.output
    assert "1 seen, 0 without our metadata" in result.output
    assert "clean: no duplicate charge" in result.output


def test_reconcile_reports_an_invoice_charged_twice_and_exits_1_until_one_is_refunded(
    app, admin, paying_customer, open_invoice, run_jobs, stripe_client
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    recorded = invoice["payment_attempts"][0]["payment_intent"]
    duplicate = _charge_again_on_stripe(stripe_client, invoice["id"])
    assert duplicate.status == "succeeded"

    result = _run(app, "reconcile", "--since", "1h")
    assert result.exit_code == 1, result.output
    assert f"OPEN     duplicate_charge   invoice {invoice['id']}" in result.output
    assert f"{recorded}  succeeded  5000 eur  refunded 0  (recorded as the invoice's payment)" in (
        result.output
    )
    assert f"{duplicate.id}  succeeded  5000 eur  refunded 0\n" in result.output
    assert "open: 1 duplicate_charge; refund duplicates by hand" in result.output
    report = json.loads(_run(app, "reconcile", "--json").output)
    assert report["open"]["duplicate_charge"] == 1 and not report["clean"]
    [finding] = report["findings"]
    assert (finding["kind"], finding["amount"], finding["currency"]) == (
        "duplicate_charge",
        5000,
        "eur",
    )

    # --fix never refunds: the duplicate is still there, and still reported.
    assert _run(app, "reconcile", "--fix").exit_code == 1
    assert duplicate.id in {i.id for i in intents_for_invoice(stripe_client, invoice["id"])}
    assert stripe_client.v1.payment_intents.retrieve(duplicate.id).status == "succeeded"

    stripe_client.v1.refunds.create(params={"payment_intent": duplicate.id})
    after = _run(app, "reconcile")
    assert after.exit_code == 0, after.output
    assert "resolved duplicate_charge" in after.output
    assert "all but one refunded" in after.output


def test_refunding_a_duplicate_recorded_by_webhook_leaves_the_invoice_as_paid_once(
    app, admin, client, paying_customer, open_invoice, run_jobs, stripe_client
):
    from billing.adapters.stripe_gateway import PaymentIntentResult
    from billing.charging import charges
    from billing.models import ChargeAttempt
    from billing.platform.ids import new_id

    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    duplicate = _charge_again_on_stripe(stripe_client, invoice["id"])
    # A declined attempt whose intent the customer confirmed later: the webhook path
    # records the money on it as a duplicate payment.
    attempt_id = new_id("ca")
    db.session.add(
        ChargeAttempt(
            id=attempt_id,
            invoice_id=invoice["id"],
            ledger_key=f"charge:{attempt_id}",
            status="failed",
            source="api",
            amount=5000,
            currency="eur",
        )
    )
    db.session.commit()
    recorded = charges.apply_intent_from_stripe(
        attempt_id, PaymentIntentResult(id=duplicate.id, status="succeeded", amount=5000)
    )
    assert recorded == "duplicate_payment"

    # The runbook's refund, on Stripe, of the intent not recorded as the invoice's payment.
    stripe_client.v1.refunds.create(params={"payment_intent": duplicate.id})
    payload = event(
        "charge.refunded",
        {"object": "charge", "payment_intent": duplicate.id, "amount_refunded": 5000},
    )
    response = client.post(
        "/v1/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload, "whsec_test")},
    )
    assert response.status_code == 200
    run_jobs()
    after = _invoice(admin, invoice["id"])
    assert (after["status"], after["amount_paid"], after["amount_refunded"]) == ("paid", 5000, 0)
    assert _run(app, "reconcile").exit_code == 0


def test_the_nightly_reconciliation_alerts_on_a_duplicate_with_an_error_and_the_metric(
    app, admin, paying_customer, open_invoice, run_jobs, stripe_client, celery_app
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    duplicate = _charge_again_on_stripe(stripe_client, invoice["id"])
    before = _duplicates_found()
    with capture_logs() as logs:
        open_findings = celery_app.tasks["billing.reconcile_ledger"].apply().get()
    assert open_findings == 1
    assert _duplicates_found() == before + 1
    [alert] = [log for log in logs if log["event"] == "reconcile.duplicate_charge"]
    assert alert["log_level"] == "error"
    assert alert["invoice_id"] == invoice["id"]
    assert sorted(alert["payment_intents"]) == sorted(
        [invoice["payment_attempts"][0]["payment_intent"], duplicate.id]
    )
    # It alerts; it does not refund.
    assert stripe_client.v1.payment_intents.retrieve(duplicate.id).status == "succeeded"
    assert _invoice(admin, invoice["id"])["amount_refunded"] == 0


def test_the_nightly_reconciliation_is_scheduled_at_the_configured_hour(service_env):
    from billing.config import ConfigError, Settings
    from workers.schedule import beat_schedule

    entry = beat_schedule(Settings.from_env({**service_env, "RECONCILE_HOUR": "5"}))[
        "reconcile-ledger"
    ]
    assert entry["task"] == "billing.reconcile_ledger"
    assert entry["schedule"].hour == {5} and entry["schedule"].minute == {30}
    assert Settings.from_env(service_env).reconcile_hour == 4
    with pytest.raises(ConfigError, match="RECONCILE_HOUR must be 0 to 23"):
        Settings.from_env({**service_env, "RECONCILE_HOUR": "24"})


def _charge_with_the_answer_lost(admin, paying_customer, open_invoice, proxied_app, fault) -> str:
    from billing.charging import charges
    from billing.platform.errors import TransientJobError

    invoice = open_invoice(paying_customer())
    proxied, proxy = proxied_app
    fault(proxy)
    attempt_id = _invoice(admin, invoice["id"])["payment_attempts"][0]["id"]
    with proxied.app_context():
        with pytest.raises(TransientJobError):
            charges.execute_charge(attempt_id)
        db.session.remove()
    [attempt] = _invoice(admin, invoice["id"])["payment_attempts"]
    assert attempt["status"] == "unknown"
    return str(invoice["id"])


def test_reconcile_fix_adopts_a_payment_whose_answer_was_lost_and_the_invoice_becomes_paid(
    app, admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice_id = _charge_with_the_answer_lost(
        admin, paying_customer, open_invoice, proxied_app, lambda proxy: proxy.drop_responses(1)
    )
    [intent] = intents_for_invoice(stripe_client, invoice_id)
    attempt_id = intent.metadata["attempt_id"]

    found = _run(app, "reconcile")
    assert found.exit_code == 1, found.output
    assert f"OPEN     missing_payment    invoice {invoice_id} attempt {attempt_id}" in found.output
    assert "--fix adopts Stripe's truth" in found.output

    fixed = _run(app, "reconcile", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "adopted Stripe's succeeded: the attempt is now succeeded" in fixed.output
    invoice = _invoice(admin, invoice_id)
    assert (invoice["status"], invoice["amount_paid"]) == ("paid", 5000)
    [attempt] = invoice["payment_attempts"]
    assert (attempt["status"], attempt["payment_intent"]) == ("succeeded", intent.id)
    entry = db.session.scalars(select(LedgerEntry).where(LedgerEntry.key == f"charge:{attempt_id}"))
    assert entry.one().state == "succeeded"
    # Adopted, never charged again.
    assert [i.id for i in intents_for_invoice(stripe_client, invoice_id)] == [intent.id]
    assert _run(app, "reconcile").exit_code == 0


def test_reconcile_fix_creates_nothing_for_an_unknown_attempt_stripe_never_received(
    app, admin, paying_customer, open_invoice, proxied_app, stripe_client
):
    invoice_id = _charge_with_the_answer_lost(
        admin,
        paying_customer,
        open_invoice,
        proxied_app,
        lambda proxy: proxy.fail_requests(1, status=503, path="/v1/payment_intents"),
    )
    result = _run(app, "reconcile", "--fix")
    assert result.exit_code == 1, result.output
    assert f"OPEN     unknown_attempt    invoice {invoice_id}" in result.output
    assert "Stripe has no PaymentIntent for it" in result.output
    assert intents_for_invoice(stripe_client, invoice_id) == []
    assert _invoice(admin, invoice_id)["payment_attempts"][0]["status"] == "unknown"


def test_reconcile_ignores_payment_intents_without_our_metadata_but_counts_them(
    app, paying_customer, stripe_client
):
    customer = paying_customer()
    stripe_client.v1.payment_intents.create(
        params={
            "amount": 700,
            "currency": "eur",
            "customer": customer["stripe_customer_id"],
            "payment_method": customer["default_payment_method"],
            "confirm": True,
            "off_session": True,
        }
    )
    result = _run(app, "reconcile")
    assert result.exit_code == 0, result.output
    assert "1 seen, 1 without our metadata (ignored)" in result.output


def test_reconcile_asks_stripe_only_for_the_payment_intents_created_in_its_range(
    admin, paying_customer, open_invoice, run_jobs, proxied_app
):
    _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    proxied, proxy = proxied_app
    with proxied.app_context():
        runner = proxied.test_cli_runner()
        now = runner.invoke(args=["reconcile", "--since", "1h"])
        past = runner.invoke(args=["reconcile", "--since", "2025-06-01", "--until", "2025-06-02"])
        db.session.remove()
    assert now.exit_code == 0, now.output
    assert "1 seen, 0 without our metadata" in now.output
    assert past.exit_code == 0, past.output
    assert "0 seen, 0 without our metadata" in past.output
    asked = [parse_qs(urlsplit(path).query) for method, path in proxy.received if method == "GET"]
    [recent, june] = [(int(q["created[gte]"][0]), int(q["created[lt]"][0])) for q in asked]
    assert recent[1] - recent[0] in (3600, 3601)  # whole seconds around the hour
    assert june == (1748736000, 1748822400)  # 2025-06-01 and 2025-06-02, 00:00 UTC


def test_when_stripe_does_not_answer_reconcile_exits_3_and_the_nightly_run_logs_an_error(
    proxied_app,
):
    from billing.charging import reconciliation

    proxied, proxy = proxied_app
    proxy.fail_requests(2, status=503, path="/v1/payment_intents")
    with proxied.app_context():
        result = proxied.test_cli_runner().invoke(args=["reconcile"])
        assert result.exit_code == 3, result.output
        assert result.output.startswith("error: Stripe did not answer: ")
        with capture_logs() as logs:
            assert reconciliation.reconcile_last_two_days() is None
        db.session.remove()
    assert [log["log_level"] for log in logs if log["event"] == "reconcile.stripe_unavailable"] == [
        "error"
    ]


def test_reconcile_refuses_a_range_that_ends_before_it_starts(app):
    result = _run(app, "reconcile", "--since", "2025-06-02", "--until", "2025-06-01")
    assert result.exit_code == 2
    assert "must be before --until" in result.output
    assert _run(app, "reconcile", "--since", "yesterday").exit_code == 2


# --- invoices -----------------------------------------------------------------------------


def _issued(mailbox) -> list[Any]:
    return [m for m in mailbox.messages if m.message["Subject"].startswith("Invoice ")]


def test_resending_an_invoice_email_delivers_a_second_message_with_its_own_message_id(
    app, admin, paying_customer, open_invoice, run_jobs, mailbox
):
    invoice = _paid_invoice(admin, paying_customer, open_invoice, run_jobs)
    [first] = _issued(mailbox)

    result = _run(app, "invoices", "resend-email", invoice["id"])
    assert result.exit_code == 0, result.output
    assert f"queued invoice_issued for {invoice['id']} (resend 1) to billing@acme.example" in (
        result.output
    )
    run_jobs()
    first_again, second = _issued(mailbox)
    assert first_again is first
    assert second.rcpt_tos == ("billing@acme.example",)
    assert second.message["Message-ID"] != first.message["Message-ID"]
    [attachment] = list(second.message.iter_attachments())
    assert attachment.get_filename() == f"invoice-{invoice['number']}.pdf"

    # Each resend is one more message, never swallowed by the dedupe of the one before.
    assert "(resend 2)" in _run(app, "invoices", "resend-email", invoice["id"]).output
    run_jobs()
    assert len(_issued(mailbox)) == 3


def test_a_receipt_is_not_resent_for_an_invoice_that_is_not_paid(app, admin, make_customer):
    customer = make_customer()
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": 900}],
        },
    ).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    result = _run(app, "invoices", "resend-email", invoice["id"], "--kind", "payment_receipt")
    assert result.exit_code == 1
    assert "a payment_receipt email is not sent for a open invoice (only paid)" in result.output
    never = _run(app, "invoices", "resend-email", invoice["id"], "--kind", "payment_reminder")
    assert never.exit_code == 1
    assert f"no payment_reminder email was ever recorded for {invoice['id']}" in never.output
    missing = _run(app, "invoices", "resend-email", "in_nope")
    assert missing.exit_code == 1 and "No such invoice: 'in_nope'" in missing.output


def _versions(invoice_id: str) -> list[InvoiceDocument]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(InvoiceDocument)
            .where(InvoiceDocument.invoice_id == invoice_id)
            .order_by(InvoiceDocument.version)
        )
    )


def test_a_rerender_after_a_template_fix_stores_a_new_version_and_keeps_the_old(
    app, admin, make_customer, run_jobs, monkeypatch, tmp_path
):
    from billing.documents import invoice_pdf
    from billing.documents.fetcher import TEMPLATES_DIR

    # The first document comes from the template as it was before a fix that nobody
    # marked with a new TEMPLATE_VERSION: same invoice, same fingerprint, other bytes.
    before_fix = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, before_fix)
    with (before_fix / "invoice.css").open("a") as css:
        css.write("\nbody { color: #444444; }\n")
    current = invoice_pdf.renderer()
    monkeypatch.setattr(invoice_pdf, "_renderer", invoice_pdf.DocumentRenderer(before_fix))
    invoice = admin.post(
        "/v1/invoices",
        json={
            "customer": make_customer()["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Seats", "quantity": 3, "unit_amount": 1500}],
        },
    ).get_json()
    admin.post(f"/v1/invoices/{invoice['id']}/finalize")
    run_jobs()
    monkeypatch.setattr(invoice_pdf, "_renderer", current)
    [old] = _versions(invoice["id"])

    # An ordinary render finds the fingerprint unchanged and does nothing.
    from billing.documents.documents import render_invoice

    assert render_invoice(invoice["id"]) == "unchanged"

    result = _run(app, "invoices", "rerender", invoice["id"])
    assert result.exit_code == 0, result.output
    assert f"{invoice['id']}: render recorded as job" in result.output
    run_jobs()
    first, second = _versions(invoice["id"])
    assert (first.id, first.sha256) == (old.id, old.sha256)
    assert second.version == 2 and second.sha256 != old.sha256
    assert second.source_fingerprint == old.source_fingerprint

    # Rendered again with nothing changed: the same bytes, no third version.
    assert _run(app, "invoices", "rerender", invoice["id"]).exit_code == 0
    run_jobs()
    assert len(_versions(invoice["id"])) == 2


def test_a_rerender_is_refused_for_a_draft_or_an_unknown_invoice(app, admin, make_customer):
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": make_customer()["id"],
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": 100}],
        },
    ).get_json()
    result = _run(app, "invoices", "rerender", draft["id"])
    assert result.exit_code == 1 and "is a draft" in result.output
    assert "No such invoice" in _run(app, "invoices", "rerender", "in_nope").output
    assert _run(app, "invoices", "rerender").exit_code == 2
    assert (
        db.session.scalar(select(func.count()).where(OutboxJob.name == "pdf.render_invoice")) == 0
    )


# --- outbox, queues, beat -----------------------------------------------------------------


def test_outbox_status_counts_jobs_and_exits_1_when_the_sweeper_falls_behind(
    app, make_customer, redis_client
):
    customer = make_customer()
    fresh = _run(app, "outbox", "status")
    assert fresh.exit_code == 0, fresh.output
    billing_row = next(line for line in fresh.output.splitlines() if line.startswith("billing "))
    assert billing_row.split() == ["billing", "0", "1", "0", "0", "0"]
    assert f"oldest unfinished: {customer['sync_job']} billing.sync_customer (sent)" in (
        fresh.output
    )
    assert "leases run out: 0" in fresh.output and "sweeper: keeping up" in fresh.output

    # Its lease ran out ten minutes ago and nobody sent it again: no sweeper is running.
    db.session.execute(
        update(OutboxJob).values(lease_expires_at=func.now() - timedelta(minutes=10))
    )
    db.session.commit()
    behind = _run(app, "outbox", "status")
    assert behind.exit_code == 1, behind.output
    assert "leases run out: 1, the oldest 10 min ago" in behind.output
    assert "sweeper: BEHIND" in behind.output
    document = json.loads(_run(app, "outbox", "status", "--json").output)
    assert document["lease_expired"] == 1 and document["sweeper_behind"] is True

    _run(app, "outbox", "sweep")
    assert _run(app, "outbox", "status").exit_code == 0


def test_queues_show_each_queues_depth_and_the_outbox_behind_it(app, make_customer, redis_client):
    make_customer()
    result = _run(app, "queues")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "queue",
        "depth",
        "oldest",
        "message",
        "unfinished",
        "jobs",
        "oldest",
        "unfinished",
    ]
    billing = next(line for line in lines if line.startswith("billing"))
    assert billing.split()[:2] == ["billing", "1"]
    assert billing.split()[4] == "1"  # its age ("0 s") spans two words
    [state] = [q for q in json.loads(_run(app, "queues", "--json").output) if q["queue"] == "pdf"]
    assert (state["depth"], state["unfinished_jobs"]) == (0, 0)
    assert sum(redis_client.llen(key) for key in queue_keys("billing")) == 1  # still there


def test_queues_exit_3_with_one_clear_line_when_redis_does_not_answer(service_env):
    from billing import create_app

    unreachable = create_app({**service_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    with unreachable.app_context():
        result = unreachable.test_cli_runner().invoke(args=["queues"])
    assert result.exit_code == 3
    assert result.output.startswith("error: Redis did not answer: ")


def test_beat_status_names_the_beat_holding_the_lock_and_exits_1_when_none_does(
    app, celery_app, redis_client
):
    import os
    import socket

    from redbeat.schedulers import acquire_distributed_beat_lock

    from workers.beat import BillingRedBeatScheduler

    nobody = _run(app, "beat", "status")
    assert nobody.exit_code == 1
    assert "lock billing:redbeat:lock: free: no beat holds it" in nobody.output

    scheduler = BillingRedBeatScheduler(app=celery_app)
    acquire_distributed_beat_lock(sender=types.SimpleNamespace(scheduler=scheduler))
    try:
        scheduler.tick()
        held = _run(app, "beat", "status")
        assert held.exit_code == 0, held.output
        assert re.search(
            r"lock billing:redbeat:lock: held, (29|30) s left unless renewed", held.output
        )
        assert f"holder: beat on {socket.gethostname()} pid {os.getpid()}, started " in (
            held.output
        )
        assert "stale" not in held.output
        sweep = next(line for line in held.output.splitlines() if line.startswith("sweep-outbox"))
        assert "billing.sweep_outbox" in sweep and " UTC" in sweep
        assert any(line.startswith("reconcile-ledger") for line in held.output.splitlines())
    finally:
        scheduler.close()
    assert _run(app, "beat", "status").exit_code == 1


# --- webhooks and dead letters ------------------------------------------------------------


def test_a_stored_webhook_event_is_listed_and_replayed(app, client, run_jobs):
    payload = event("customer.updated", {"id": "cus_x"}, id_="evt_ops_1")
    response = client.post(
        "/v1/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": stripe_signature(payload, "whsec_test")},
    )
    assert response.status_code == 200
    run_jobs()
    listed = _run(app, "webhooks", "list")
    assert listed.exit_code == 0
    assert "evt_ops_1\tcustomer.updated\tignored" in listed.output
    replayed = _run(app, "webhooks", "replay", "evt_ops_1")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.output.startswith("replaying evt_ops_1 as job job_")
    run_jobs()
    assert "evt_ops_1\tcustomer.updated\tignored" in _run(app, "webhooks", "list").output
    unknown = _run(app, "webhooks", "replay", "evt_nope")
    assert unknown.exit_code == 1 and "no stored event evt_nope" in unknown.output


def test_an_unknown_dead_letter_is_a_clear_error(app):
    shown = _run(app, "dead-letters", "show", "job_nope")
    assert shown.exit_code == 1 and "no job job_nope" in shown.output
    replayed = _run(app, "dead-letters", "replay", "job_nope")
    assert replayed.exit_code == 1 and "no job job_nope" in replayed.output
