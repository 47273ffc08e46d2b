from datetime import date

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

import billing.models  # noqa: F401  (registers the tables)
from billing.cli import alembic_config
from billing.extensions import db
from tests.conftest import create_scratch_database, drop_scratch_database


def test_the_models_and_the_migrations_agree(database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    engine.dispose()
    assert differences == []


def test_migrations_upgrade_downgrade_and_upgrade_again(server_database_url):
    url = create_scratch_database(server_database_url, "billing_migrations")
    try:
        config = alembic_config(url)
        command.upgrade(config, "head")
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        assert {"customers", "invoices", "invoice_lines", "ledger_entries", "outbox_jobs"} <= tables
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        command.upgrade(config, "head")
        assert set(inspect(engine).get_table_names()) == tables
        engine.dispose()
    finally:
        drop_scratch_database(server_database_url, url)


def test_invoices_whose_charge_failed_before_dunning_existed_enter_dunning(server_database_url):
    url = create_scratch_database(server_database_url, "billing_backfill")
    try:
        config = alembic_config(url)
        command.upgrade(config, "0008")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO customers (id, name, email, currency) "
                    "VALUES ('cus_old', 'Old Ltd', 'ap@old.example', 'eur')"
                )
            )
            for invoice, status, attempts in (
                ("in_failed", "open", ["failed", "failed"]),
                ("in_retrying", "open", ["failed", "pending"]),
                ("in_paid", "paid", ["failed", "succeeded"]),
                ("in_never_charged", "open", []),
            ):
                connection.execute(
                    text(
                        "INSERT INTO invoices (id, customer_id, status, number, currency, "
                        "collection_method, subtotal, total, amount_paid, finalized_at) "
                        "VALUES (:id, 'cus_old', :status, :id, 'eur', 'charge_automatically', "
                        "500, 500, CASE WHEN :status = 'paid' THEN 500 ELSE 0 END, now())"
                    ),
                    {"id": invoice, "status": status},
                )
                for n, attempt in enumerate(attempts):
                    connection.execute(
                        text(
                            "INSERT INTO charge_attempts (id, invoice_id, ledger_key, status, "
                            "source, amount, currency, finished_at) VALUES (:id, :invoice, :id, "
                            ":status, 'automatic', 500, 'eur', "
                            "TIMESTAMPTZ '2026-03-10 23:30+00' + make_interval(days => :n))"
                        ),
                        {"id": f"ca_{invoice}_{n}", "invoice": invoice, "status": attempt, "n": n},
                    )
        command.upgrade(config, "head")
        with engine.connect() as connection:
            started = dict(
                connection.execute(text("SELECT id, dunning_started_on FROM invoices")).all()
            )
        engine.dispose()
        assert started == {
            "in_failed": date(2026, 3, 10),  # its first failure, in UTC
            "in_retrying": None,  # a charge is on its way: it starts dunning if that fails
            "in_paid": None,
            "in_never_charged": None,
        }
    finally:
        drop_scratch_database(server_database_url, url)
