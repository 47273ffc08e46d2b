"""The charge job's plain case runs as two prebuilt statements (take, record a success);
every other case goes through the ORM phases. Both must leave the same rows behind, and
the one-statement record must be fenced by the ledger exactly as the ORM one is."""

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import ChargeAttempt, EmailDelivery, Invoice, LedgerEntry, OutboxJob
from billing.services import charge_statements, emails
from billing.services.outbox import single_statements
from tests.conftest import intents_for_invoice

LEASE = timedelta(seconds=30)


def _charge_job(invoice_id: str, attempt_id: str) -> str:
    return db.session.scalar(
        select(OutboxJob.id).where(
            OutboxJob.name == "billing.charge_invoice",
            OutboxJob.args["attempt_id"].astext == attempt_id,
        )
    )


def _take(attempt_id: str) -> charge_statements.Taken | None:
    with single_statements() as connection:
        return charge_statements.take(connection, attempt_id, LEASE)


def _what_the_charge_left(invoice_id: str) -> dict[str, Any]:
    """Every row the charge wrote, without ids and times that differ between invoices."""
    db.session.expire_all()
    invoice = db.session.get(Invoice, invoice_id)
    assert invoice is not None
    [attempt] = invoice.charge_attempts
    entry = db.session.scalars(
        select(LedgerEntry).where(LedgerEntry.key == attempt.ledger_key)
    ).one()
    receipts = db.session.scalars(
        select(EmailDelivery)
        .where(EmailDelivery.invoice_id == invoice_id, EmailDelivery.kind == "payment_receipt")
        .order_by(EmailDelivery.recipient)
    ).all()
    jobs = db.session.scalars(
        select(OutboxJob).where(OutboxJob.name != "billing.charge_invoice").order_by(OutboxJob.id)
    ).all()
    mine = [
        job
        for job in jobs
        if job.args.get("invoice_id") == invoice_id
        or job.args.get("delivery_id") in {r.id for r in receipts}
    ]
    charge_job = db.session.get(OutboxJob, _charge_job(invoice_id, attempt.id))
    return {
        "invoice": (invoice.status, invoice.amount_paid, invoice.paid_at is not None),
        "attempt": (
            attempt.status,
            attempt.payment_method,
            attempt.stripe_payment_intent_id is not None,
            attempt.decline_code,
            attempt.failure_message,
            attempt.finished_at is not None,
        ),
        "ledger": (
            entry.state,
            entry.fingerprint == attempt.id,
            entry.locked_until,
            entry.outcome
            == {"status": "succeeded", "payment_intent": attempt.stripe_payment_intent_id},
        ),
        "receipts": [
            (
                r.kind,
                r.occasion == attempt.id,
                r.recipient,
                r.ledger_key == f"payment_receipt:{invoice_id}:{attempt.id}:{r.recipient.lower()}",
                r.message_id == emails.message_id_for(r.ledger_key),
                r.status,
                r.context,
                r.attempts,
            )
            for r in receipts
        ],
        "jobs": sorted(
            (
                job.name,
                job.queue,
                job.state,
                job.attempts,
                sorted(job.args),
                job.lease_expires_at > job.sent_at,
            )
            for job in mine
        ),
        "charge job": (charge_job.state, charge_job.attempts, charge_job.finished_at is not None),
    }


def test_the_one_statement_record_leaves_what_the_orm_phases_leave(
    paying_customer, open_invoice, celery_app, stripe_client
):
    customer = paying_customer(billing_emails=["ap@acme.example", "cfo@acme.example"])
    plain = open_invoice(customer, amount=4200)
    resumed = open_invoice(customer, amount=4200)
    charge = celery_app.tasks["billing.charge_invoice"]

    [plain_attempt] = plain["payment_attempts"]
    charge.apply(kwargs={"job_id": _charge_job(plain["id"], plain_attempt["id"])})

    # The other one was taken by a worker that died before calling Stripe: its next run
    # resumes the claim, finds no intent on Stripe, and goes the ORM way.
    [resumed_attempt] = resumed["payment_attempts"]
    assert _take(resumed_attempt["id"]) is not None
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.key == f"charge:{resumed_attempt['id']}")
        .values(locked_until=func.now() - timedelta(seconds=1))
    )
    db.session.commit()
    charge.apply(kwargs={"job_id": _charge_job(resumed["id"], resumed_attempt["id"])})

    attempts_by_key = dict(db.session.execute(select(LedgerEntry.key, LedgerEntry.attempt)).all())
    assert attempts_by_key[f"charge:{plain_attempt['id']}"] == 1  # taken once: the plain path
    assert attempts_by_key[f"charge:{resumed_attempt['id']}"] == 2  # resumed: the ORM path
    left_by_plain = _what_the_charge_left(plain["id"])
    assert left_by_plain == _what_the_charge_left(resumed["id"])
    assert left_by_plain["invoice"] == ("paid", 4200, True)
    assert [r[2] for r in left_by_plain["receipts"]] == [
        "ap@acme.example",
        "billing@acme.example",
        "cfo@acme.example",
    ]
    # A send job per receipt, and the re-render of the now paid invoice besides the one
    # its finalization recorded.
    assert [job[0] for job in left_by_plain["jobs"]] == ["mail.send_email"] * 3 + [
        "pdf.render_invoice"
    ] * 2
    assert left_by_plain["charge job"] == ("succeeded", 1, True)
    for invoice in (plain, resumed):
        assert [i.status for i in intents_for_invoice(stripe_client, invoice["id"])] == [
            "succeeded"
        ]


def test_a_take_claims_only_a_pending_attempt_of_a_payable_invoice(
    admin, paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer())
    [attempt] = invoice["payment_attempts"]
    taken = _take(attempt["id"])
    assert taken is not None and (taken.amount, taken.currency) == (5000, "eur")
    assert db.session.get(ChargeAttempt, attempt["id"]).status == "started"
    # Taken already: the second take claims nothing and changes nothing.
    assert _take(attempt["id"]) is None
    entry = db.session.get(LedgerEntry, taken.entry_id)
    assert (entry.key, entry.state, entry.attempt) == (f"charge:{attempt['id']}", "started", 1)

    voided = open_invoice(paying_customer(email="other@acme.example"))
    [pending] = voided["payment_attempts"]
    db.session.execute(update(Invoice).where(Invoice.id == voided["id"]).values(status="void"))
    db.session.commit()
    assert _take(pending["id"]) is None
    db.session.expire_all()
    assert db.session.get(ChargeAttempt, pending["id"]).status == "pending"
    assert not db.session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.key == f"charge:{pending['id']}")
    )


def test_a_success_recorded_after_the_claim_was_taken_over_changes_nothing(
    paying_customer, open_invoice
):
    invoice = open_invoice(paying_customer())
    [attempt] = invoice["payment_attempts"]
    taken = _take(attempt["id"])
    assert taken is not None
    jobs_before = db.session.scalar(select(func.count()).select_from(OutboxJob))
    # Another run (or a webhook) took the entry over: this run's fencing token is stale.
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.id == taken.entry_id)
        .values(attempt=LedgerEntry.attempt + 1)
    )
    db.session.commit()

    with single_statements() as connection:
        recorded = charge_statements.record_success(
            connection,
            attempt["id"],
            taken,
            "pi_late",
            5000,
            receipts=[
                {**delivery, "job_id": f"job_receipt_{n}"}
                for n, delivery in enumerate(
                    emails.new_deliveries(
                        "payment_receipt", invoice["id"], attempt["id"], ["billing@acme.example"]
                    )
                )
            ],
            render_job_id="job_render_late",
            request_id=None,
            job_lease=LEASE,
        )
    assert recorded is None
    db.session.expire_all()
    assert db.session.get(ChargeAttempt, attempt["id"]).status == "started"
    assert db.session.get(Invoice, invoice["id"]).status == "open"
    assert db.session.scalar(select(func.count()).select_from(EmailDelivery)) == 0
    assert db.session.scalar(select(func.count()).select_from(OutboxJob)) == jobs_before
    assert db.session.get(LedgerEntry, taken.entry_id).state == "started"
