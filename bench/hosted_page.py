"""Views of the hosted invoice page, against a bare Flask app rendering a Jinja template of
the same size and against the same page written the simple way, measured in the same run.
Last line: the ratio hosted/guide.

    python bench/hosted_page.py [--lines 10] [--views 1000] [--rounds 4]

Both are served in this process through Flask's test client (no HTTP server, no network),
so that what is measured is the request's own work:
  * hosted: the service's app (`create_app`, as configured for hosted pages: a link key, a
    public address, Stripe.js), GET /pay/<token> for one open invoice of `--lines` lines,
    made through the service's own API on a scratch database (its jobs recorded, none run):
    the link checked, the invoice and its customer, lines, payments and documents read,
    the page rendered with its CSRF token and security headers;
  * bare: a Flask app with one route rendering, from constants, a Jinja template (loaded
    and compiled once, as an app's template files are) with the invoice's number, status,
    amounts and a loop over the same lines, padded with static text so that it answers as
    many bytes as the hosted page.
  * guide: the same page written the simple way the Flask guides teach, on the same
    stack: a Flask-SQLAlchemy app whose view takes an itsdangerous-signed token, looks the
    invoice up by number (`first_or_404`), lets its customer, lines and payments load
    lazily, formats the amounts with an f-string and renders one template of the same size.
    No CSRF token, security headers, rate limits, dunning plan, document list or locale.
Rounds alternate hosted, bare, guide, hosted, bare, guide..., each after its own warm-up,
so that a slow spell of a shared machine falls on all; a rate is views over the summed time
of a side's rounds. Rate limits are set high enough never to refuse.

The issue's target is hosted/bare at least 0.5; a page that reads its invoice from
PostgreSQL cannot come near a template rendered from constants, so the line that says what
the guarantees cost is hosted/guide, which reads the same rows. Both are printed; the last
line is hosted/guide.
Uses DATABASE_URL / REDIS_URL or the machine's servers, else embedded ones.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, render_template, render_template_string
from flask_sqlalchemy import SQLAlchemy
from itsdangerous import URLSafeSerializer
from jinja2 import DictLoader
from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._support import NoBroker, migrated_database  # noqa: E402

STATE = ROOT / ".devstack" / "bench"

BARE_TEMPLATE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Invoice {{ number }} - {{ seller }}</title>
<link rel="stylesheet" href="/assets/page.css"></head>
<body>
<h1>Invoice {{ number }}</h1>
<p class="status" data-status="{{ status }}">{{ status | capitalize }}</p>
<dl><dt>Amount due</dt><dd>{{ amount_due }}</dd><dt>Total</dt><dd>{{ total }}</dd></dl>
<table><caption>Lines</caption><tbody>
{% for line in lines %}<tr><td>{{ line.description }}</td><td>{{ line.quantity }}</td>
<td>{{ line.unit_price }}</td><td>{{ line.amount }}</td></tr>
{% endfor %}</tbody></table>
<table><caption>Payments</caption><tbody><tr><td>No payments yet.</td></tr></tbody></table>
<p>{{ filler }}</p>
</body></html>
"""


def bare_app(html_size: int, number: str, lines: int) -> Flask:
    """The baseline: one route, one template, nothing read; its static padding makes its
    answer as long as the hosted page's."""
    app = Flask(__name__)
    values: dict[str, Any] = {
        "seller": "SaaS Company GmbH",
        "number": number,
        "status": "open",
        "amount_due": "€1,234.00",
        "total": "€1,234.00",
        "lines": [
            {
                "description": f"Seats, line {n}",
                "quantity": 1,
                "unit_price": "€123.40",
                "amount": "€123.40",
            }
            for n in range(lines)
        ],
        "filler": "",
    }
    unpadded = len(render_with(app, values))
    # A template file as an app has one (compiled once, cached by Jinja's environment).
    padded = BARE_TEMPLATE.replace("{{ filler }}", "x" * max(0, html_size - unpadded))
    app.jinja_loader = DictLoader({"page.html": padded})

    @app.get("/pay/<token>")
    def page(token: str) -> str:
        return render_template("page.html", **values)

    return app


GUIDE_TEMPLATE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Invoice {{ invoice.number }} - {{ seller }}</title>
<link rel="stylesheet" href="/assets/page.css"></head>
<body>
<h1>Invoice {{ invoice.number }}</h1>
<p class="status" data-status="{{ invoice.status }}">{{ invoice.status | capitalize }}</p>
<p>Bill to {{ invoice.customer.name }}</p>
<dl><dt>Amount due</dt><dd>{{ money(invoice.total - invoice.amount_paid) }}</dd>
<dt>Total</dt><dd>{{ money(invoice.total) }}</dd></dl>
<table><caption>Lines</caption><tbody>
{% for line in invoice.lines %}<tr><td>{{ line.description }}</td><td>{{ line.quantity }}</td>
<td>{{ money(line.unit_amount) }}</td><td>{{ money(line.amount) }}</td></tr>
{% endfor %}</tbody></table>
<table><caption>Payments</caption><tbody>
{% for attempt in invoice.attempts %}<tr><td>{{ money(attempt.amount) }}</td>
<td>{{ attempt.status }}</td></tr>
{% else %}<tr><td>No payments yet.</td></tr>{% endfor %}</tbody></table>
<p>{{ filler }}</p>
</body></html>
"""


def guide_app(database_url: str, html_size: int, number: str) -> tuple[Flask, str]:
    """The page as the Flask, Flask-SQLAlchemy and itsdangerous guides would have it
    written: models of the same tables, lazy relationships, a signed token; and its path."""

    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)

    class Customer(db.Model):  # type: ignore[name-defined]
        __tablename__ = "customers"
        id: Mapped[str] = mapped_column(String, primary_key=True)
        name: Mapped[str] = mapped_column(String)

    class Line(db.Model):  # type: ignore[name-defined]
        __tablename__ = "invoice_lines"
        id: Mapped[str] = mapped_column(String, primary_key=True)
        invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
        description: Mapped[str] = mapped_column(String)
        quantity: Mapped[int] = mapped_column(Integer)
        unit_amount: Mapped[int] = mapped_column(BigInteger)
        amount: Mapped[int] = mapped_column(BigInteger)

    class Attempt(db.Model):  # type: ignore[name-defined]
        __tablename__ = "charge_attempts"
        id: Mapped[str] = mapped_column(String, primary_key=True)
        invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
        status: Mapped[str] = mapped_column(String)
        amount: Mapped[int] = mapped_column(BigInteger)

    class Invoice(db.Model):  # type: ignore[name-defined]
        __tablename__ = "invoices"
        id: Mapped[str] = mapped_column(String, primary_key=True)
        number: Mapped[str] = mapped_column(String)
        status: Mapped[str] = mapped_column(String)
        total: Mapped[int] = mapped_column(BigInteger)
        amount_paid: Mapped[int] = mapped_column(BigInteger)
        customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
        customer = relationship(Customer)
        lines = relationship(Line)
        attempts = relationship(Attempt)

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SECRET_KEY"] = secrets.token_urlsafe(32)
    db.init_app(app)
    signer = URLSafeSerializer(app.config["SECRET_KEY"], salt="invoice")

    def money(minor_units: int) -> str:
        return f"€{minor_units / 100:,.2f}"

    values = {"seller": "SaaS Company GmbH", "money": money}
    with app.app_context():
        invoice = db.session.execute(db.select(Invoice).filter_by(number=number)).scalar_one()
        app.jinja_loader = DictLoader({"page.html": GUIDE_TEMPLATE.replace("{{ filler }}", "")})
        with app.test_request_context():
            unpadded = len(render_template("page.html", invoice=invoice, **values).encode())
        padded = GUIDE_TEMPLATE.replace("{{ filler }}", "x" * max(0, html_size - unpadded))
        app.jinja_loader = DictLoader({"page.html": padded})
        if app.jinja_env.cache is not None:
            app.jinja_env.cache.clear()

    @app.get("/pay/<token>")
    def page(token: str) -> str:
        found = db.first_or_404(db.select(Invoice).filter_by(number=signer.loads(token)))
        return render_template("page.html", invoice=found, **values)

    return app, f"/pay/{signer.dumps(number)}"


def render_with(app: Flask, values: dict[str, Any]) -> bytes:
    with app.test_request_context():
        return render_template_string(BARE_TEMPLATE, **values).encode()


def hosted_app(database_url: str, redis_url: str) -> Flask:
    from billing import create_app

    return create_app(
        {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
            "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
            "HOSTED_LINK_KEYS": f"bench:{secrets.token_urlsafe(32)}",
            "STRIPE_PUBLISHABLE_KEY": "pk_test_bench",
            "API_RATE_LIMIT": "1000000 per second",
            "HOSTED_LINK_RATE_LIMIT": "1000000 per second",
            "HOSTED_ADDRESS_RATE_LIMIT": "1000000 per second",
        },
        publisher=NoBroker(),
    )


def seed(app: Flask, lines: int) -> tuple[str, str]:
    """One open invoice, through the service's API; its hosted page's path and number."""
    from billing.access.api_keys import create_api_key

    with app.app_context():
        _, secret = create_api_key("bench-hosted-page")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {secret}"}

    def post(path: str, body: Any = None) -> Any:
        response = client.post(path, json=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.get_data()[:300]!r}")
        return response.get_json()

    customer = post(
        "/v1/customers",
        {"name": "Acme GmbH", "email": "billing@acme.example", "currency": "eur"},
    )
    draft = post(
        "/v1/invoices",
        {
            "customer": customer["id"],
            "collection_method": "send_invoice",
            "days_until_due": 14,
            "lines": [
                {"description": f"Seats, line {n}", "quantity": 1, "unit_amount": 12340}
                for n in range(lines)
            ],
        },
    )
    invoice = post(f"/v1/invoices/{draft['id']}/finalize")
    url = client.get(f"/v1/invoices/{invoice['id']}", headers=headers).get_json()[
        "hosted_invoice_url"
    ]
    if not url:
        raise RuntimeError("the invoice has no hosted_invoice_url")
    return urlsplit(url).path, invoice["number"]


def views(app: Flask, path: str, count: int) -> tuple[float, int]:
    """Seconds for `count` views of `path` (after a warm-up), and the page's size."""
    client = app.test_client()
    size = 0
    for _ in range(max(10, count // 20)):
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.get_data()[:300]!r}")
        size = len(response.get_data())
    started = time.perf_counter()
    for _ in range(count):
        response = client.get(path)
        response.get_data()
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code}")
    return elapsed, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--views", type=int, default=1000, help="per side and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)

    from devstack.servers import resolve_redis_url

    with ExitStack() as scratch:
        database_url = scratch.enter_context(migrated_database(STATE))
        redis_url, embedded_redis = resolve_redis_url(STATE, allow_local=True)
        if embedded_redis is not None:
            scratch.callback(embedded_redis.stop)
        hosted = hosted_app(database_url, redis_url)
        path, number = seed(hosted, args.lines)
        _, hosted_size = views(hosted, path, 1)
        bare = bare_app(hosted_size, number, args.lines)
        guide, guide_path = guide_app(database_url, hosted_size, number)

        seconds = {"hosted": 0.0, "bare": 0.0, "guide": 0.0}
        sizes = {"hosted": hosted_size, "bare": 0, "guide": 0}
        for _ in range(args.rounds):
            for name, app, at in (
                ("hosted", hosted, path),
                ("bare", bare, path),
                ("guide", guide, guide_path),
            ):
                elapsed, size = views(app, at, args.views)
                seconds[name] += elapsed
                sizes[name] = size
        total = args.views * args.rounds
        rate = {name: total / seconds[name] for name in seconds}
        from billing.extensions import db

        with hosted.app_context():
            db.engine.dispose()
        with guide.app_context():
            guide.extensions["sqlalchemy"].engine.dispose()

    print(
        f"hosted page, GET /pay/<token> ({args.lines} lines, {sizes['hosted']} B): "
        f"{rate['hosted']:,.0f} views/s"
    )
    print(f"bare Flask app, one Jinja template ({sizes['bare']} B): {rate['bare']:,.0f} views/s")
    print(
        f"guide-style Flask-SQLAlchemy page, same rows ({sizes['guide']} B): "
        f"{rate['guide']:,.0f} views/s"
    )
    print(f"hosted/bare: {rate['hosted'] / rate['bare']:.3f} (the issue's target: 0.5)")
    print(f"hosted/guide: {rate['hosted'] / rate['guide']:.3f}")


if __name__ == "__main__":
    main()
