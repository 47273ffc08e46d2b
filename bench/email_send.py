"""Invoice emails with a 30 KB PDF attached: the mail worker's path against two baselines.

All three send the same kind of message (multipart/alternative text and HTML, a PDF
attached) to the same local SMTP server (aiosmtpd, in its own process), one at a time:
  * raw floor: smtplib over one reused connection, messages built with the standard library;
  * guide-style version (bench/_guide_app.py): the same use case the simple way the Flask,
    Flask-Mail and Celery guides teach, a Celery task run in this process that checks an
    idempotency key in a table, renders our same templates with `render_template`, attaches
    the PDF from its invoice row, `mail.send(msg)` (a connection per send, as Flask-Mail's
    docs show) and marks the row sent, in its own database on the same PostgreSQL server;
  * service: the `mail.send_email` Celery task run in this process for recorded deliveries:
    outbox claim, ledger claim, templates, the stored PDF read from PostgreSQL, the send,
    and the recorded outcome (everything but the broker hop).
The three run in alternating rounds (a quarter of the emails each; the service and the
guide-style version swap places every round), and each rate is its emails over its summed
time: on a shared machine a slow spell then slows all of them, instead of whichever happened
to run during it.
Last line: ours over the guide-style version (target: at least 0.5), and ours over the raw
floor (the earlier target: at least 0.5).

    python bench/email_send.py [--emails 400]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import smtplib
import subprocess
import sys
import time
from contextlib import ExitStack
from email.message import EmailMessage
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench._support import NoBroker, migrated_database, scratch_database  # noqa: E402
from devstack.servers import free_port  # noqa: E402

STATE = ROOT / ".devstack" / "bench"
PDF_SIZE = 30 * 1024


def _pdf() -> bytes:
    # A PDF-looking attachment of exactly 30 KB; its bytes only have to travel.
    head = b"%PDF-1.7\n% bench attachment\n"
    body = hashlib.shake_256(b"bench").digest(PDF_SIZE - len(head))
    return head + body


ROUNDS = 4


def _baseline(smtp: Any, numbers: range, pdf: bytes) -> float:
    """Seconds plain smtplib takes to build and send emails `numbers` over `smtp`."""
    text = "Hello,\n\ninvoice INV-1 for €1,200.00 is attached.\n" * 4
    html = "<p>Hello,</p><p>invoice INV-1 for <strong>€1,200.00</strong> is attached.</p>" * 4
    started = time.perf_counter()
    for i in numbers:
        message = EmailMessage()
        message["Subject"] = f"Invoice INV-{i} from Example SaaS Ltd"
        message["From"] = "billing@saas.example"
        message["To"] = f"Customer <customer{i}@bench.example>"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        message.add_attachment(
            pdf, maintype="application", subtype="pdf", filename=f"invoice-INV-{i}.pdf"
        )
        smtp.send_message(message)
    return time.perf_counter() - started


def _seed(n: int, pdf: bytes) -> list[str]:
    """n issued invoices, each with its stored PDF and one recorded "invoice issued" email;
    returns the send jobs."""
    from sqlalchemy import select

    from billing.extensions import db
    from billing.models import Customer, Invoice, InvoiceDocument, OutboxJob, StoredBlob
    from billing.notifications import emails
    from billing.platform.unit_of_work import transaction

    digest = hashlib.sha256(pdf).hexdigest()
    with transaction() as session:
        session.add(
            StoredBlob(key=f"bench/{digest}.pdf", content=pdf, content_type="application/pdf")
        )
        for i in range(n):
            customer = Customer(
                name=f"Customer {i} GmbH", email=f"customer{i}@bench.example", currency="eur"
            )
            session.add(customer)
            session.flush()
            invoice = Invoice(
                customer_id=customer.id,
                status="open",
                number=f"BENCH-{i:06d}",
                currency="eur",
                collection_method="send_invoice",
                subtotal=120000,
                total=120000,
                due_date=None,
            )
            session.add(invoice)
            session.flush()
            session.add(
                InvoiceDocument(
                    invoice_id=invoice.id,
                    version=1,
                    invoice_status="open",
                    sha256=digest,
                    size=len(pdf),
                    storage="postgres",
                    storage_key=f"bench/{digest}.pdf",
                    template_version="bench",
                    renderer_version="bench",
                    source_fingerprint=digest,
                )
            )
            emails.queue_email(session, "invoice_issued", invoice)
    return list(db.session.scalars(select(OutboxJob.id).where(OutboxJob.name == "mail.send_email")))


def _seed_guide(app: Any, n: int, pdf: bytes) -> list[int]:
    """The same n invoices and emails in the guide-style app's own tables; returns the
    emails' ids."""
    from bench._guide_app import Customer, Email, Invoice, db

    with app.app_context():
        db.create_all()
        emails = []
        for i in range(n):
            customer = Customer(name=f"Customer {i} GmbH", email=f"customer{i}@bench.example")
            invoice = Invoice(
                customer=customer,
                number=f"BENCH-{i:06d}",
                amount=120000,
                currency="eur",
                status="open",
                pdf=pdf,
            )
            emails.append(Email(invoice=invoice, to=customer.email))
        db.session.add_all(emails)
        db.session.commit()
        return [email.id for email in emails]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emails", type=int, default=400)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)

    scratch = ExitStack()
    database_url = scratch.enter_context(migrated_database(STATE))
    # The guide-style version's own database, on the same server.
    guide_database_url = scratch.enter_context(scratch_database(database_url))
    port = free_port()
    smtp = subprocess.Popen(
        [sys.executable, "-m", "devstack.smtp", "--port", str(port), "--discard"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert smtp.stdout is not None
        smtp.stdout.readline()  # "listening on ..."
        from bench._guide_app import create_app as create_guide_app
        from billing import create_app
        from workers.app import make_celery

        mail_settings = {
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(port),
            "MAIL_DEFAULT_SENDER": "billing@saas.example",
        }
        # Made first: ours stays Celery's default app, as it is without the guide's.
        guide_app = create_guide_app(
            {**mail_settings, "DATABASE_URL": guide_database_url, "REDIS_URL": "memory://"}
        )
        guide_task = guide_app.extensions["celery"].tasks["guide.send_invoice_email"]
        app = create_app(
            {
                **os.environ,
                **mail_settings,
                "DATABASE_URL": database_url,
                "LOG_LEVEL": "WARNING",
            },
            publisher=NoBroker(),
        )
        celery = make_celery(app)
        task = celery.tasks["mail.send_email"]
        pdf = _pdf()
        guide_emails = _seed_guide(guide_app, args.emails, pdf)
        with app.app_context():
            jobs = _seed(args.emails, pdf)
            task.apply(kwargs={"job_id": jobs[0]})  # warm: templates compiled, connection open
            guide_task.apply(args=(guide_emails[0],))  # warm: templates compiled
            from sqlalchemy import event

            from bench._guide_app import db as guide_db
            from billing.extensions import db

            with guide_app.app_context():
                guide_engine = guide_db.engine
            engines = {"service": db.engine, "guide": guide_engine}
            round_trips = dict.fromkeys(engines, 0)

            def counter(which: str) -> Any:
                def count(*_: object) -> None:
                    round_trips[which] += 1

                return count

            counters = {which: counter(which) for which in engines}

            def timed(which: str, send: Any, batch: list[Any]) -> float:
                # Statements, and the COMMITs (and ROLLBACKs) psycopg2 sends on their own.
                for name in ("before_cursor_execute", "commit", "rollback"):
                    event.listen(engines[which], name, counters[which])
                started = time.perf_counter()
                for item in batch:
                    send(item)
                seconds = time.perf_counter() - started
                for name in ("before_cursor_execute", "commit", "rollback"):
                    event.remove(engines[which], name, counters[which])
                return seconds

            baseline_seconds = service_seconds = guide_seconds = 0.0

            def service_round(start: int, size: int) -> None:
                nonlocal service_seconds
                service_seconds += timed(
                    "service",
                    lambda job_id: task.apply(kwargs={"job_id": job_id}),
                    jobs[start : start + size],
                )

            def guide_round(start: int, size: int) -> None:
                nonlocal guide_seconds
                guide_seconds += timed(
                    "guide",
                    lambda email_id: guide_task.apply(args=(email_id,)),
                    guide_emails[start : start + size],
                )

            per_round = -(-(len(jobs) - 1) // ROUNDS)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for number, start in enumerate(range(1, len(jobs), per_round)):
                    size = len(jobs[start : start + per_round])
                    baseline_seconds += _baseline(client, range(start, start + size), pdf)
                    for run in (service_round, guide_round)[:: -1 if number % 2 else 1]:
                        run(start, size)
            sent_count = len(jobs) - 1
            baseline = sent_count / baseline_seconds
            service = sent_count / service_seconds
            guide = sent_count / guide_seconds
            from sqlalchemy import func, select

            from billing.models import EmailDelivery

            sent = db.session.scalar(select(func.count()).where(EmailDelivery.status == "sent"))
            assert sent == len(jobs), f"only {sent} of {len(jobs)} emails were sent"
            db.session.remove()
            db.engine.dispose()
        with guide_app.app_context():
            from bench._guide_app import Email

            sent = guide_db.session.scalar(select(func.count()).where(Email.status == "sent"))
            assert sent == len(guide_emails), f"guide-style: only {sent} emails were sent"
            guide_db.session.remove()
            guide_engine.dispose()
        print(f"plain smtplib, one reused connection: {baseline:.0f} emails/s ({sent_count})")
        print(
            "guide-style Flask-Mail task (key table, templates, PDF from its row, mail.send, "
            f"mark sent): {guide:.0f} emails/s ({sent_count})"
        )
        print(
            f"service mail task (outbox, ledger, templates, PDF from PostgreSQL, send, record): "
            f"{service:.0f} emails/s ({sent_count})"
        )
        print(f"attachment: {len(pdf) // 1024} KB PDF")
        print(
            "PostgreSQL round trips per email (statements, commits, rollbacks): "
            f"service {round_trips['service'] / sent_count:.1f}, "
            f"guide-style {round_trips['guide'] / sent_count:.1f}"
        )
        print(
            f"ours/simple guide version: {service / guide:.2f} "
            f"(ours {service:.1f}/s, simple {guide:.1f}/s); "
            f"ours/raw floor: {service / baseline:.2f}"
        )
        return 0
    finally:
        smtp.terminate()
        smtp.wait(10)
        scratch.close()


if __name__ == "__main__":
    sys.exit(main())
