"""Invoice emails with a 30 KB PDF attached: the mail worker's path against plain smtplib.

Both send the same kind of message (multipart/alternative text and HTML, a PDF attached)
to the same local SMTP server (aiosmtpd, in its own process), one at a time:
  * baseline: smtplib over one reused connection, messages built with the standard library;
  * service: the `mail.send_email` Celery task run in this process for recorded deliveries:
    outbox claim, ledger claim, templates, the stored PDF read from PostgreSQL, the send,
    and the recorded outcome (everything but the broker hop).
The two run in alternating rounds (a quarter of the emails each), and each rate is its
emails over its summed time: on a shared machine a slow spell then slows both, instead of
whichever happened to run during it.
Last line: the ratio service/baseline (target: at least 0.5).

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


from bench._support import NoBroker, migrated_database  # noqa: E402
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
    from billing.services import emails
    from billing.services.unit_of_work import transaction

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emails", type=int, default=400)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)

    scratch = ExitStack()
    database_url = scratch.enter_context(migrated_database(STATE))
    port = free_port()
    smtp = subprocess.Popen(
        [sys.executable, "-m", "devstack.smtp", "--port", str(port), "--discard"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert smtp.stdout is not None
        smtp.stdout.readline()  # "listening on ..."
        from billing import create_app
        from workers.app import make_celery

        app = create_app(
            {
                **os.environ,
                "DATABASE_URL": database_url,
                "MAIL_SERVER": "127.0.0.1",
                "MAIL_PORT": str(port),
                "MAIL_DEFAULT_SENDER": "billing@saas.example",
                "LOG_LEVEL": "WARNING",
            },
            publisher=NoBroker(),
        )
        celery = make_celery(app)
        task = celery.tasks["mail.send_email"]
        pdf = _pdf()
        with app.app_context():
            jobs = _seed(args.emails, pdf)
            task.apply(kwargs={"job_id": jobs[0]})  # warm: templates compiled, connection open
            from sqlalchemy import event

            from billing.extensions import db

            round_trips = [0]

            def count(*_: object) -> None:
                round_trips[0] += 1

            baseline_seconds = service_seconds = 0.0
            per_round = -(-(len(jobs) - 1) // ROUNDS)
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for start in range(1, len(jobs), per_round):
                    batch = jobs[start : start + per_round]
                    baseline_seconds += _baseline(client, range(start, start + len(batch)), pdf)
                    # Statements, and the COMMITs (and ROLLBACKs) psycopg2 sends on their own.
                    for name in ("before_cursor_execute", "commit", "rollback"):
                        event.listen(db.engine, name, count)
                    started = time.perf_counter()
                    for job_id in batch:
                        task.apply(kwargs={"job_id": job_id})
                    service_seconds += time.perf_counter() - started
                    for name in ("before_cursor_execute", "commit", "rollback"):
                        event.remove(db.engine, name, count)
            baseline = (len(jobs) - 1) / baseline_seconds
            service = (len(jobs) - 1) / service_seconds
            from sqlalchemy import func, select

            from billing.models import EmailDelivery

            sent = db.session.scalar(select(func.count()).where(EmailDelivery.status == "sent"))
            assert sent == len(jobs), f"only {sent} of {len(jobs)} emails were sent"
            db.session.remove()
            db.engine.dispose()
        print(f"plain smtplib, one reused connection: {baseline:.0f} emails/s ({len(jobs) - 1})")
        print(
            f"service mail task (outbox, ledger, templates, PDF from PostgreSQL, send, record): "
            f"{service:.0f} emails/s ({len(jobs) - 1})"
        )
        print(f"attachment: {len(pdf) // 1024} KB PDF")
        print(
            "PostgreSQL round trips per email (statements, commits, rollbacks): "
            f"{round_trips[0] / (len(jobs) - 1):.1f}"
        )
        print(f"ratio service/smtplib: {service / baseline:.2f}")
        return 0
    finally:
        smtp.terminate()
        smtp.wait(10)
        scratch.close()


if __name__ == "__main__":
    sys.exit(main())
