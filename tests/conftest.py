"""Real servers for the tests: PostgreSQL, Redis and the Stripe emulator.

Each comes from the environment (DATABASE_URL, REDIS_URL) when set, from the machine's
own servers when they answer on their usual ports, and otherwise is started embedded
under .devstack/test. Each test run gets a database of its own, created and dropped here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis
from sqlalchemy.engine import make_url

from devstack.servers import LocalStripe, resolve_database_url, resolve_redis_url
from devstack.smtp import SinkHandler, SmtpSink
from tests.support.stripe_proxy import StripeProxy

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".devstack" / "test"
# Away from database 0, which a developer's own stack may use; one per concurrent run.
TEST_REDIS_DBS = range(10, 16)
# BILLING_TEST_SERVERS=embedded ignores the machine's own servers: how a fresh machine runs.
USE_LOCAL_SERVERS = os.environ.get("BILLING_TEST_SERVERS") != "embedded"
TABLES = (
    "tax_rates, webhook_attempts, webhook_deliveries, webhook_secrets, webhook_endpoints, events, "
    "dunning_steps, email_deliveries, invoice_documents, stored_blobs, stripe_events, refunds, "
    "charge_attempts, invoice_lines, invoices, api_keys, customers, "
    "ledger_entries, outbox_jobs, invoice_number_sequences, "
    "subscription_adjustments, subscription_periods, subscriptions, prices, "
    "credit_note_documents, credit_note_lines, credit_notes, credit_note_number_sequences, "
    "customer_balance_transactions, invoice_discounts, discounts, promotion_codes, coupons"
)


def _connect_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"user": parsed.username or "postgres", "dbname": parsed.database}
    if parsed.password:
        kwargs["password"] = parsed.password
    if parsed.host:
        kwargs["host"] = parsed.host
    if parsed.port:
        kwargs["port"] = parsed.port
    if "host" in parsed.query:
        kwargs["host"] = parsed.query["host"]
    return kwargs


def _admin(url: str) -> Any:
    connection = psycopg2.connect(**_connect_kwargs(url))
    connection.autocommit = True
    return connection


@pytest.fixture(scope="session")
def server_database_url() -> Iterator[str]:
    STATE.mkdir(parents=True, exist_ok=True)
    url, embedded = resolve_database_url(STATE, allow_local=USE_LOCAL_SERVERS)
    try:
        yield url
    finally:
        if embedded is not None:
            embedded.stop()


def create_scratch_database(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with closing(_admin(server_url)) as connection, connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    with closing(_admin(server_url)) as connection, connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(server_database_url: str) -> Iterator[str]:
    url = create_scratch_database(server_database_url, "billing_test")
    from alembic import command

    from billing.cli import alembic_config

    command.upgrade(alembic_config(url), "head")
    try:
        yield url
    finally:
        drop_scratch_database(server_database_url, url)


def _claim_redis_database(url: str) -> tuple[str, redis.Redis, str]:
    """On a shared Redis, take a database no other test run is using: tests flush theirs.
    The claims live in database 0, which no test flushes, and expire if a run dies."""
    base = url.rstrip("/").rsplit("/", 1)[0]
    registry = redis.Redis.from_url(f"{base}/0")
    for number in TEST_REDIS_DBS:
        claim = f"billing-tests:redis-db:{number}"
        if registry.set(claim, str(os.getpid()), nx=True, ex=3 * 3600):
            return f"{base}/{number}", registry, claim
    raise RuntimeError(f"every Redis database in {list(TEST_REDIS_DBS)} is in use by a test run")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url, embedded = resolve_redis_url(STATE, allow_local=USE_LOCAL_SERVERS)
    claim: tuple[redis.Redis, str] | None = None
    if embedded is None and "REDIS_URL" not in os.environ:
        url, registry, key = _claim_redis_database(url)
        claim = (registry, key)
    try:
        yield url
    finally:
        if claim is not None:
            claim[0].delete(claim[1])
            claim[0].close()
        if embedded is not None:
            embedded.stop()


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    STATE.mkdir(parents=True, exist_ok=True)
    server = LocalStripe(STATE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class FaultySinkHandler(SinkHandler):
    """The test SMTP server: accepts everything unless told to refuse some recipients,
    for now (4xx) or for good (5xx)."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: dict[str, str] = {}
        self.refusals_left: dict[str, int] = {}

    def refuse(self, address: str, reply: str, times: int | None = None) -> None:
        """Answer `reply` to RCPT TO:<address>, every time or only the next `times`."""
        self.refusals[address.lower()] = reply
        if times is not None:
            self.refusals_left[address.lower()] = times

    def rcpt_reply(self, address: str) -> str | None:
        address = address.lower()
        if address in self.refusals_left:
            if self.refusals_left[address] <= 0:
                return None
            self.refusals_left[address] -= 1
        return self.refusals.get(address)

    def reset(self) -> None:
        self.clear()
        self.refusals.clear()
        self.refusals_left.clear()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpSink]:
    server = SmtpSink(FaultySinkHandler()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailbox(smtp_server: SmtpSink) -> Iterator[SmtpSink]:
    """The SMTP server's own list of what it received: emptied for each test."""
    handler = smtp_server.handler
    assert isinstance(handler, FaultySinkHandler)
    handler.reset()
    yield smtp_server
    handler.reset()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def service_env(
    database_url: str, redis_url: str, localstripe: LocalStripe, mailbox: SmtpSink
) -> dict[str, str]:
    return {
        "MAIL_SERVER": mailbox.host,
        "MAIL_PORT": str(mailbox.port),
        "MAIL_DEFAULT_SENDER": "billing@saas.example",
        "MAIL_TIMEOUT": "5",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": localstripe.url,
        "STRIPE_WEBHOOK_SECRET": "whsec_test",
        "LOG_LEVEL": "WARNING",
        "OUTBOX_LEASE_SECONDS": "300",
    }


@pytest.fixture
def app(service_env: dict[str, str], redis_client: redis.Redis, localstripe: LocalStripe):
    from billing import create_app
    from billing.extensions import db

    localstripe.reset()
    flask_app = create_app(service_env)
    flask_app.config["TESTING"] = True
    with flask_app.app_context():
        db.session.execute(db.text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        db.session.commit()
        yield flask_app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """A test client that speaks JSON with one API key."""

    def __init__(self, client: Any, secret: str) -> None:
        self.client = client
        self.secret = secret

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.secret}"}
        headers.update(extra or {})
        return headers

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self._headers(kwargs.pop("headers", None)), **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.client.post(
            path, json=json, headers=self._headers(kwargs.pop("headers", None)), **kwargs
        )

    def patch(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.client.patch(
            path, json=json, headers=self._headers(kwargs.pop("headers", None)), **kwargs
        )

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.client.delete(
            path, headers=self._headers(kwargs.pop("headers", None)), **kwargs
        )


@pytest.fixture
def admin(app, client) -> Api:
    from billing.access.api_keys import create_api_key

    _, secret = create_api_key("test-admin")
    return Api(client, secret)


@pytest.fixture
def make_customer(admin: Api):
    def make(**overrides: Any) -> dict[str, Any]:
        body = {"name": "Acme GmbH", "email": "billing@acme.example", "currency": "eur"}
        body.update(overrides)
        response = admin.post("/v1/customers", json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    return make


@pytest.fixture
def customer_api(app, client):
    from billing.access.api_keys import create_api_key

    def make(customer_id: str) -> Api:
        _, secret = create_api_key("test-customer", customer_id)
        return Api(client, secret)

    return make


@pytest.fixture
def stripe_client(localstripe: LocalStripe) -> Any:
    import stripe

    return stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )


@pytest.fixture
def celery_app(app):
    from workers.app import make_celery

    return make_celery(app)


@pytest.fixture
def run_jobs(celery_app):
    """Run every recorded job that is due, in this process, through its real Celery task,
    until none is left: the worker's code path without a worker process."""
    from sqlalchemy import select

    from billing.extensions import db
    from billing.models import OutboxJob

    def run(max_rounds: int = 20) -> int:
        ran = 0
        for _ in range(max_rounds):
            due = db.session.execute(
                select(OutboxJob.id, OutboxJob.name).where(OutboxJob.state.in_(("pending", "sent")))
            ).all()
            db.session.commit()
            if not due:
                return ran
            for job_id, name in due:
                celery_app.tasks[name].apply(kwargs={"job_id": job_id})
                ran += 1
        return ran

    return run


CARD_OK = "4242424242424242"
CARD_DECLINED_AFTER_ATTACH = "4000000000000341"
CARD_NEEDS_3DS = "4000002760003184"


@pytest.fixture
def paying_customer(admin, make_customer, stripe_client, run_jobs):
    """A customer on Stripe with a default card (given by its test number)."""

    def make(card: str = CARD_OK, **fields: Any) -> dict[str, Any]:
        customer = make_customer(**fields)
        run_jobs()
        pm = stripe_client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            }
        )
        response = admin.post(
            f"/v1/customers/{customer['id']}/payment_method", json={"payment_method": pm.id}
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    return make


@pytest.fixture
def open_invoice(admin):
    """A finalized invoice for the customer (its automatic charge is recorded, not run)."""

    def make(customer: dict[str, Any], amount: int = 5000, **fields: Any) -> dict[str, Any]:
        body = {
            "customer": customer["id"],
            "lines": [{"description": "Seats", "quantity": 1, "unit_amount": amount}],
            **fields,
        }
        draft = admin.post("/v1/invoices", json=body).get_json()
        finalized = admin.post(f"/v1/invoices/{draft['id']}/finalize")
        assert finalized.status_code == 200, finalized.get_json()
        return finalized.get_json()  # type: ignore[no-any-return]

    return make


def intents_for_invoice(stripe_client: Any, invoice_id: str) -> list[Any]:
    """The emulator's own list of PaymentIntents for one invoice: the independent truth."""
    return [
        intent
        for intent in stripe_client.v1.payment_intents.list(
            params={"limit": 100}
        ).auto_paging_iter()
        if (intent.to_dict().get("metadata") or {}).get("invoice_id") == invoice_id
    ]


@pytest.fixture
def proxied_app(service_env, localstripe, app):
    """The service talking to the emulator through a proxy that can lose answers."""
    from billing import create_app
    from workers.app import make_celery

    proxy = StripeProxy(localstripe.url).start()
    proxied = create_app(
        {**service_env, "STRIPE_API_BASE": proxy.url, "STRIPE_TIMEOUT_SECONDS": "5"}
    )
    make_celery(proxied)
    try:
        yield proxied, proxy
    finally:
        proxy.stop()
        make_celery(app)
