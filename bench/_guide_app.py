"""The benches' other baseline: the same use cases written the simple way the Flask and
Celery guides teach, on the same stack (Flask-SQLAlchemy on PostgreSQL, Celery on Redis,
the `stripe` SDK, Flask-Mail over SMTP). Not a benchmark itself: `make bench` skips files
starting with `_`.

What a competent developer following the docs would write, nothing deliberately slow:
  * the app factory with Flask's `celery_init_app` (every task in an app context), tasks
    declared with `@shared_task`, tables made with `db.create_all()`;
  * a view that inserts an invoice row, commits and calls `charge_invoice.delay(id)`;
  * `charge_invoice`: the guides' "idempotency key in a table" check (insert the key, skip
    when it is there already), `stripe.PaymentIntent.create(confirm=True, off_session=True,
    idempotency_key=key)` as our service sends it, and the status committed together with
    the key (a crash before the commit leaves the key free; the retry sends the same Stripe
    idempotency key, so Stripe answers with the same PaymentIntent);
  * `send_invoice_email`: the same key check, `render_template` for the subject, text and
    HTML, the invoice's PDF attached from its row, `mail.send(msg)` (Flask-Mail opens a
    connection per send, as its docs show), and the row marked sent in the same commit.

It renders our service's own `invoice_issued` templates, so that both send the same
email; the money is formatted the simple way (no locales).

Configuration from the environment (the processes `bench/charges.py` starts) or a mapping:
DATABASE_URL, REDIS_URL, STRIPE_API_KEY, STRIPE_API_BASE, MAIL_SERVER, MAIL_PORT,
MAIL_DEFAULT_SENDER. The Celery worker's app is `bench._guide_worker` (the guide's
`make_celery.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import stripe
from celery import Celery, Task, shared_task
from flask import Flask, current_app, render_template, request
from flask_mail import Mail, Message
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

QUEUE = "guide"  # its own queue on the shared broker: our workers never see its tasks
# Our service's templates for the same email (read only).
TEMPLATES = Path(__file__).resolve().parents[1] / "billing" / "notifications" / "templates"


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
mail = Mail()


class Customer(db.Model):  # type: ignore[name-defined]
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    payment_method: Mapped[str | None] = mapped_column(String(64))


class Invoice(db.Model):  # type: ignore[name-defined]
    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    customer: Mapped[Customer] = relationship()
    number: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32), default="open")
    payment_intent_id: Mapped[str | None] = mapped_column(String(64))
    issued_on: Mapped[date | None]
    due_on: Mapped[date | None]
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary)


class Email(db.Model):  # type: ignore[name-defined]
    __tablename__ = "emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id"))
    invoice: Mapped[Invoice] = relationship()
    to: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    sent_at: Mapped[datetime | None]


class ProcessedKey(db.Model):  # type: ignore[name-defined]
    """Keys of the tasks that ran: a key found here is a task that must not run again."""

    __tablename__ = "processed_keys"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


def celery_init_app(app: Flask) -> Celery:
    """As in Flask's "Background Tasks with Celery" guide."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    env = {**os.environ, **(config or {})}
    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI=env["DATABASE_URL"],
        CELERY={
            "broker_url": env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "task_ignore_result": True,
            "task_default_queue": QUEUE,
        },
        MAIL_SERVER=env.get("MAIL_SERVER", "localhost"),
        MAIL_PORT=int(env.get("MAIL_PORT", "25")),
        MAIL_DEFAULT_SENDER=env.get("MAIL_DEFAULT_SENDER", "billing@saas.example"),
        SELLER_NAME="Example SaaS Ltd",
    )
    stripe.api_key = env.get("STRIPE_API_KEY", "sk_test_local")
    if env.get("STRIPE_API_BASE"):
        stripe.api_base = env["STRIPE_API_BASE"]
    db.init_app(app)
    mail.init_app(app)
    celery_init_app(app)

    @app.post("/invoices")
    def create_invoice() -> tuple[dict[str, Any], int]:
        data = request.get_json()
        invoice = Invoice(
            customer_id=data["customer_id"],
            amount=data["amount"],
            currency=data.get("currency", "eur"),
            status="open",
        )
        db.session.add(invoice)
        db.session.commit()
        charge_invoice.delay(invoice.id)
        return {"id": invoice.id, "status": invoice.status}, 202

    return app


def _claim(key: str) -> bool:
    """The key inserted in this transaction; False when it was there already. A task
    running it concurrently holds the row until it commits, and this one then skips."""
    inserted = db.session.execute(
        insert(ProcessedKey).values(key=key).on_conflict_do_nothing().returning(ProcessedKey.key)
    ).first()
    return inserted is not None


@shared_task(name="guide.charge_invoice", ignore_result=True)
def charge_invoice(invoice_id: int) -> None:
    key = f"charge-invoice-{invoice_id}"
    if not _claim(key):
        db.session.rollback()
        return
    invoice = db.session.get_one(Invoice, invoice_id)
    customer = invoice.customer
    if customer.stripe_customer_id is None or customer.payment_method is None:
        invoice.status = "requires_payment_method"
        db.session.commit()
        return
    try:
        intent = stripe.PaymentIntent.create(
            amount=invoice.amount,
            currency=invoice.currency,
            customer=customer.stripe_customer_id,
            payment_method=customer.payment_method,
            confirm=True,
            off_session=True,
            metadata={"invoice_id": str(invoice.id)},
            idempotency_key=key,
        )
    except stripe.CardError as exc:
        invoice.status = "failed"
        intent_failed = exc.error.payment_intent if exc.error else None
        invoice.payment_intent_id = intent_failed.id if intent_failed else None
    else:
        invoice.payment_intent_id = intent.id
        invoice.status = "paid" if intent.status == "succeeded" else intent.status
    db.session.commit()


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


@shared_task(name="guide.send_invoice_email", ignore_result=True)
def send_invoice_email(email_id: int) -> None:
    key = f"invoice-email-{email_id}"
    if not _claim(key):
        db.session.rollback()
        return
    email = db.session.get_one(Email, email_id)
    invoice = email.invoice
    context = {
        "seller_name": current_app.config["SELLER_NAME"],
        "seller_email": None,
        "portal_url": None,
        "payment_instructions": None,
        "customer_name": invoice.customer.name,
        "invoice_number": invoice.number,
        "status": invoice.status,
        "collection_method": "send_invoice",
        "total": _money(invoice.amount, invoice.currency),
        "amount_due": _money(invoice.amount, invoice.currency),
        "issue_date": invoice.issued_on.isoformat() if invoice.issued_on else "",
        "due_date": invoice.due_on.isoformat() if invoice.due_on else "",
    }
    msg = Message(
        subject=render_template("invoice_issued/subject.txt", **context).strip(),
        recipients=[email.to],
        body=render_template("invoice_issued/body.txt", **context),
        html=render_template("invoice_issued/body.html", **context),
    )
    assert invoice.pdf is not None
    msg.attach(f"invoice-{invoice.number}.pdf", "application/pdf", invoice.pdf)
    mail.send(msg)
    email.status = "sent"
    email.sent_at = datetime.now(UTC)
    db.session.commit()
