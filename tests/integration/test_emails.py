"""Customer emails through a real SMTP server on loopback (aiosmtpd): what it received
is the truth each test checks, never a mock of our own mailer."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

from click.testing import CliRunner
from pypdf import PdfReader
from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import Customer, EmailDelivery, OutboxJob
from billing.platform.outbox import JobWork
from tests.conftest import CARD_DECLINED_AFTER_ATTACH, CARD_NEEDS_3DS


def _by_kind(mailbox, subject_part: str) -> list[Any]:
    return [m for m in mailbox.messages if subject_part in m.message["Subject"]]


def _send_invoice(admin, customer: dict[str, Any], amount: int = 12000) -> dict[str, Any]:
    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "lines": [{"description": "Annual licence", "quantity": 1, "unit_amount": amount}],
        },
    ).get_json()
    return admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()  # type: ignore[no-any-return]


def _invoice(admin, invoice_id: str) -> dict[str, Any]:
    return admin.get(f"/v1/invoices/{invoice_id}").get_json()  # type: ignore[no-any-return]


def test_an_issued_invoice_is_emailed_to_every_billing_address_with_its_pdf(
    admin, make_customer, run_jobs, mailbox
):
    customer = make_customer(
        name="Globex Corporation",
        email="ap@globex.example",
        billing_emails=["finance@globex.example", "AP@globex.example"],
    )
    invoice = _send_invoice(admin, customer)
    run_jobs()
    received = _by_kind(mailbox, "Invoice")
    assert sorted(r for m in received for r in m.rcpt_tos) == [
        "ap@globex.example",
        "finance@globex.example",
    ]
    message = received[0].message
    assert invoice["number"] in message["Subject"]
    assert message.get_content_type() == "multipart/mixed"
    alternative = next(
        p for p in message.iter_parts() if p.get_content_type() == "multipart/alternative"
    )
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert "Please pay" in alternative.get_body(("plain",)).get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == f"invoice-{invoice['number']}.pdf"
    pdf = PdfReader(io.BytesIO(attachment.get_content()))
    assert invoice["number"] in pdf.pages[0].extract_text()
    shown = _invoice(admin, invoice["id"])["emails"]
    assert {(e["kind"], e["status"]) for e in shown} == {("invoice_issued", "sent")}
    assert {e["message_id"] for e in shown} == {m.message["Message-ID"] for m in received}


def test_a_successful_charge_sends_one_receipt_even_when_the_task_runs_again(
    admin, paying_customer, open_invoice, run_jobs, mailbox, celery_app
):
    invoice = open_invoice(paying_customer())
    run_jobs()
    [receipt] = _by_kind(mailbox, "Receipt")
    assert "50.00" in receipt.message["Subject"]
    job_id = db.session.scalar(
        select(OutboxJob.id)
        .where(OutboxJob.name == "mail.send_email")
        .where(
            OutboxJob.args["delivery_id"].astext.in_(
                select(EmailDelivery.id).where(EmailDelivery.kind == "payment_receipt")
            )
        )
    )
    for _ in range(3):  # the broker delivers it again
        db.session.execute(update(OutboxJob).where(OutboxJob.id == job_id).values(state="sent"))
        db.session.commit()
        celery_app.tasks["mail.send_email"].apply(kwargs={"job_id": job_id})
    assert len(_by_kind(mailbox, "Receipt")) == 1
    kinds = sorted(e["kind"] for e in _invoice(admin, invoice["id"])["emails"])
    assert kinds == ["invoice_issued", "payment_receipt"]


def test_recording_the_same_email_twice_sends_it_once(app, admin, make_customer, run_jobs, mailbox):
    from billing.models import Invoice
    from billing.notifications import emails
    from billing.platform.unit_of_work import transaction

    invoice = _send_invoice(admin, make_customer())
    for _ in range(2):  # a webhook and the charge job both report the same event
        with transaction() as session:
            emails.queue_email(
                session, "payment_reminder", session.get(Invoice, invoice["id"]), occasion="due"
            )
    run_jobs()
    assert len(_by_kind(mailbox, "is due")) == 1


def test_a_declined_card_sends_the_reason_in_plain_words_and_what_to_do(
    admin, paying_customer, open_invoice, run_jobs, mailbox
):
    open_invoice(paying_customer(card=CARD_DECLINED_AFTER_ATTACH))
    run_jobs()
    [failed] = _by_kind(mailbox, "failed")
    text = failed.message.get_body(("plain",)).get_content()
    assert "The card was declined by the bank." in text
    assert "contact your bank" in text
    assert "card_declined" not in text


def test_a_payment_needing_authentication_asks_the_customer_to_confirm_it(
    admin, paying_customer, open_invoice, run_jobs, mailbox
):
    open_invoice(paying_customer(card=CARD_NEEDS_3DS))
    run_jobs()
    [ask] = _by_kind(mailbox, "confirm")
    assert "3-D Secure" in ask.message.get_body(("plain",)).get_content()


def test_a_refund_is_announced_with_its_amount(
    admin, paying_customer, open_invoice, run_jobs, mailbox
):
    invoice = open_invoice(paying_customer())
    run_jobs()
    admin.post(f"/v1/invoices/{invoice['id']}/refund", json={"amount": 1250})
    run_jobs()
    [refund] = _by_kind(mailbox, "Refund")
    assert "12.50" in refund.message["Subject"]


def test_a_deferred_recipient_is_retried_with_backoff_and_then_sent_once(
    admin, make_customer, run_jobs, mailbox
):
    customer = make_customer(email="slow@globex.example")
    mailbox.handler.refuse("slow@globex.example", "451 4.7.1 Greylisted, try later", times=2)
    invoice = _send_invoice(admin, customer)
    run_jobs()
    [delivery] = _invoice(admin, invoice["id"])["emails"]
    assert (delivery["status"], delivery["error"], delivery["attempts"]) == ("sent", None, 3)
    assert len(mailbox.messages) == 1
    job = db.session.scalars(select(OutboxJob).where(OutboxJob.name == "mail.send_email")).one()
    assert (job.state, job.attempts) == ("succeeded", 3)


def test_a_mail_server_that_is_down_is_a_reason_to_retry_not_to_give_up(
    service_env, admin, make_customer, run_jobs, mailbox
):
    from billing import create_app
    from billing.notifications import emails
    from billing.platform.errors import TransientJobError
    from devstack.servers import free_port

    invoice = _send_invoice(admin, make_customer())
    run_jobs()  # the invoice is issued and emailed; a reminder follows below
    down = create_app({**service_env, "MAIL_PORT": str(free_port())})
    with down.app_context():
        from billing.models import Invoice
        from billing.platform.unit_of_work import transaction

        with transaction() as session:
            [delivery_id] = emails.queue_email(
                session, "payment_reminder", session.get(Invoice, invoice["id"]), occasion="due"
            )
        try:
            emails.send_email(delivery_id)
        except TransientJobError as exc:
            assert "unreachable" in str(exc)
        else:
            raise AssertionError("a refused connection must be retried")
        db.session.expire_all()
        assert db.session.get(EmailDelivery, delivery_id).status == "pending"
    assert emails.send_email(delivery_id) == "sent"


def test_a_refused_recipient_fails_the_email_visibly_on_the_invoice_and_for_operators(
    app, admin, make_customer, run_jobs, mailbox
):
    customer = make_customer(email="gone@globex.example")
    mailbox.handler.refuse("gone@globex.example", "550 5.1.1 No such user")
    invoice = _send_invoice(admin, customer)
    run_jobs()
    [delivery] = _invoice(admin, invoice["id"])["emails"]
    assert delivery["status"] == "failed" and "550" in delivery["error"]
    assert mailbox.messages == []
    listed = CliRunner().invoke(app.cli, ["dead-letters", "list"], catch_exceptions=False)
    assert "mail.send_email" in listed.output
    # Fixed (the mailbox exists again): the operator's replay sends it.
    mailbox.handler.reset()
    job_id = db.session.scalar(select(OutboxJob.id).where(OutboxJob.name == "mail.send_email"))
    replayed = CliRunner().invoke(
        app.cli, ["dead-letters", "replay", job_id], catch_exceptions=False
    )
    assert replayed.exit_code == 0, replayed.output
    run_jobs()
    assert _invoice(admin, invoice["id"])["emails"][0]["status"] == "sent"
    assert len(mailbox.messages) == 1


def test_a_line_break_in_a_name_is_refused_by_the_api(admin):
    response = admin.post(
        "/v1/customers",
        json={"name": "Evil\r\nBcc: victim@example.com", "email": "a@b.example", "currency": "eur"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_characters"


def test_a_line_break_that_reached_the_database_never_becomes_a_header(
    admin, make_customer, run_jobs, mailbox
):
    customer = make_customer(email="ap@globex.example")
    # Written around the API, as an old import or a bug elsewhere might have.
    db.session.execute(
        update(Customer)
        .where(Customer.id == customer["id"])
        .values(name="Evil Corp\r\nBcc: victim@example.com\r\nX-Injected: yes")
    )
    db.session.commit()
    _send_invoice(admin, customer)
    run_jobs()
    [received] = mailbox.messages
    assert received.rcpt_tos == ("ap@globex.example",)
    message = received.message
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert "Evil Corp" in str(message["To"])


def test_an_email_and_its_job_are_recorded_done_in_one_commit(admin, make_customer, run_jobs):
    invoice = _send_invoice(admin, make_customer())
    run_jobs()
    db.session.expire_all()
    delivery = db.session.scalars(
        select(EmailDelivery).where(EmailDelivery.invoice_id == invoice["id"])
    ).one()
    job = db.session.scalars(
        select(OutboxJob).where(OutboxJob.args["delivery_id"].astext == delivery.id)
    ).one()
    assert (delivery.status, job.state, delivery.attempts) == ("sent", "succeeded", 1)
    # now() is the transaction's start time: equal stamps mean one transaction.
    assert job.finished_at == delivery.sent_at


def test_an_invoice_email_waits_for_its_pdf_without_holding_its_ledger_key(
    admin, make_customer, run_jobs, mailbox
):
    from billing.models import Invoice, LedgerEntry
    from billing.notifications import emails
    from billing.platform.errors import TransientJobError
    from billing.platform.unit_of_work import transaction

    invoice = _send_invoice(admin, make_customer())
    with transaction() as session:  # as an operator's resend does, before the PDF exists
        [delivery_id] = emails.queue_email(
            session, "invoice_issued", session.get(Invoice, invoice["id"])
        )
    try:
        emails.send_email(delivery_id)
    except TransientJobError as exc:
        assert "no PDF yet" in str(exc)
    else:
        raise AssertionError("an invoice email without its PDF must wait")
    assert db.session.scalar(select(func.count()).select_from(LedgerEntry)) == 0
    assert mailbox.messages == []
    run_jobs()  # the PDF is rendered, then the email's job sends it, once
    [received] = mailbox.messages
    assert invoice["number"] in received.message["Subject"]
    assert [part.get_filename() for part in received.message.walk() if part.get_filename()] == [
        f"invoice-{invoice['number']}.pdf"
    ]


def test_a_mail_job_out_of_attempts_is_dead_lettered_without_sending_or_claiming(
    admin, make_customer, mailbox, celery_app
):
    from billing.models import LedgerEntry
    from billing.platform.outbox import MAX_ATTEMPTS

    invoice = _send_invoice(admin, make_customer())
    celery_app.tasks["pdf.render_invoice"].apply(
        kwargs={
            "job_id": db.session.scalar(
                select(OutboxJob.id).where(OutboxJob.name == "pdf.render_invoice")
            )
        }
    )
    job_id = db.session.scalar(select(OutboxJob.id).where(OutboxJob.name == "mail.send_email"))
    # Every run so far died mid-send (a poison message killing its worker each time).
    db.session.execute(
        update(OutboxJob).where(OutboxJob.id == job_id).values(attempts=MAX_ATTEMPTS)
    )
    db.session.commit()
    celery_app.tasks["mail.send_email"].apply(kwargs={"job_id": job_id})
    db.session.expire_all()
    job = db.session.get(OutboxJob, job_id)
    assert job.state == "dead_lettered" and "gave up" in job.last_error
    assert mailbox.messages == []
    assert db.session.scalar(select(func.count()).select_from(LedgerEntry)) == 0
    assert _invoice(admin, invoice["id"])["emails"][0]["status"] == "pending"


def test_a_mail_job_whose_delivery_is_gone_fails_for_an_operator_to_see(
    admin, make_customer, run_jobs, mailbox, celery_app
):
    _send_invoice(admin, make_customer())
    run_jobs()
    mailbox.handler.reset()
    with db.session.begin():
        job = OutboxJob(
            name="mail.send_email", queue="mail", args={"delivery_id": "em_gone"}, state="sent"
        )
        db.session.add(job)
    celery_app.tasks["mail.send_email"].apply(kwargs={"job_id": job.id})
    db.session.expire_all()
    failed = db.session.get(OutboxJob, job.id)
    assert (failed.state, failed.last_error) == ("failed", "no email delivery em_gone")
    assert mailbox.messages == []


def test_a_dead_sender_s_claim_lapses_after_four_smtp_timeouts_not_minutes(app):
    from billing.notifications import emails

    # The tests' MAIL_TIMEOUT is 5 s: a send takes at most a connect and a transfer, each
    # within it, so 20 s covers a live sender; an email whose sender was killed waits no
    # longer than that before another worker sends it.
    assert emails._mail_lease() == timedelta(seconds=20)


def _reminder(invoice_id: str) -> str:
    from billing.models import Invoice
    from billing.notifications import emails
    from billing.platform.unit_of_work import transaction

    with transaction() as session:
        [delivery_id] = emails.queue_email(
            session, "payment_reminder", session.get(Invoice, invoice_id), occasion="due"
        )
    return delivery_id


def test_a_sender_that_died_holding_its_claim_is_taken_over_once_its_lease_ends(
    admin, make_customer, run_jobs, mailbox
):
    from billing.models import LedgerEntry
    from billing.notifications import emails
    from billing.platform.errors import HeldElsewhere
    from billing.platform.ledger import Claim

    invoice = _send_invoice(admin, make_customer())
    run_jobs()
    delivery_id = _reminder(invoice["id"])
    # A sender claimed it, then died before its send or its record.
    died = emails._take(JobWork.outside_a_job(), delivery_id)
    assert died.claimed is not None and died.claimed.claim is Claim.NEW
    try:
        emails.send_email(delivery_id)
    except HeldElsewhere as exc:
        # Back once the dead sender's lease (20 s) has run out, not a backoff later.
        assert exc.retry_after is not None and 10 < exc.retry_after <= 20
    else:
        raise AssertionError("a live claim must be left to its holder")
    assert _by_kind(mailbox, "is due") == []
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == died.claimed.entry_id)
        .values(locked_until=func.now() - timedelta(seconds=1))
    )
    db.session.commit()
    assert emails.send_email(delivery_id) == "sent"
    [due] = _by_kind(mailbox, "is due")
    db.session.expire_all()
    delivery = db.session.get(EmailDelivery, delivery_id)
    entry = db.session.get(LedgerEntry, died.claimed.entry_id)
    assert (delivery.status, entry.state, entry.attempt) == ("sent", "succeeded", 2)
    assert due.message["Message-ID"] == delivery.message_id
    assert emails.send_email(delivery_id) == "sent"  # and never again
    assert len(_by_kind(mailbox, "is due")) == 1


def test_a_message_that_cannot_be_built_frees_its_claim_and_says_why(
    admin, make_customer, run_jobs, mailbox, monkeypatch
):
    from billing.models import LedgerEntry
    from billing.notifications import emails

    invoice = _send_invoice(admin, make_customer())
    run_jobs()
    delivery_id = _reminder(invoice["id"])

    def broken(*_: Any) -> Any:
        raise RuntimeError("template broken")

    monkeypatch.setattr(emails, "compose", broken)
    try:
        emails.send_email(delivery_id)
    except RuntimeError:
        pass
    else:
        raise AssertionError("a message that cannot be built must not count as sent")
    db.session.expire_all()
    delivery = db.session.get(EmailDelivery, delivery_id)
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert delivery.error == "RuntimeError: template broken"
    held = select(func.count()).where(LedgerEntry.key == delivery.ledger_key)
    assert db.session.scalar(held) == 0
    monkeypatch.undo()
    assert emails.send_email(delivery_id) == "sent"
    assert len(_by_kind(mailbox, "is due")) == 1


def test_a_ledger_entry_done_for_an_email_still_to_send_stops_it_for_an_operator(
    admin, make_customer, run_jobs, mailbox
):
    from billing.notifications import emails
    from billing.platform.errors import PermanentJobError

    invoice = _send_invoice(admin, make_customer())
    run_jobs()
    delivery_id = _reminder(invoice["id"])
    assert emails.send_email(delivery_id) == "sent"
    # Changed by hand: the ledger says it went out, the delivery says it did not.
    db.session.execute(
        update(EmailDelivery).where(EmailDelivery.id == delivery_id).values(status="pending")
    )
    db.session.commit()
    try:
        emails.send_email(delivery_id)
    except PermanentJobError as exc:
        assert "operator" in str(exc)
    else:
        raise AssertionError("an email the ledger says went out must not go out again")
    assert len(_by_kind(mailbox, "is due")) == 1


def test_an_issued_invoice_email_shows_its_discount_the_balance_applied_and_what_is_left_due(
    admin, make_customer, run_jobs, mailbox
):
    from tests.support.discounted import DISCOUNTED_LINES, give_discounts_and_balance

    draft = admin.post(
        "/v1/invoices",
        json={
            "customer": make_customer()["id"],
            "collection_method": "send_invoice",
            "lines": DISCOUNTED_LINES,
        },
    ).get_json()
    invoice = admin.post(f"/v1/invoices/{draft['id']}/finalize").get_json()
    give_discounts_and_balance(invoice["id"])
    run_jobs()
    [issued] = _by_kind(mailbox, "Invoice")
    text = issued.message.get_body(("plain",)).get_content()
    assert "Please pay €317.95 by" in text
    assert "Discount:   -€89.80" in text
    assert "Total:      €367.95" in text
    assert "Applied from your credit balance: €50.00" in text
    assert "Amount due: €317.95" in text
    assert "Credited" not in text
    html = issued.message.get_body(("html",)).get_content()
    assert "Applied from your credit balance</td><td>€50.00" in html
