from datetime import date

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

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


def test_lines_issued_before_tax_inclusive_lines_keep_their_amounts(server_database_url):
    url = create_scratch_database(server_database_url, "billing_inclusive")
    try:
        config = alembic_config(url)
        command.upgrade(config, "0016")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO customers (id, name, email, currency) "
                    "VALUES ('cus_old', 'Old Ltd', 'ap@old.example', 'eur')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO invoices (id, customer_id, status, number, currency, "
                    "collection_method, subtotal, tax, total, finalized_at) "
                    "VALUES ('in_old', 'cus_old', 'open', 'INV-2026-000001', 'eur', "
                    "'charge_automatically', 3000, 570, 3570, now())"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO invoice_lines (id, invoice_id, description, quantity, "
                    "unit_amount, tax_rate, amount, tax) "
                    "VALUES ('il_old', 'in_old', 'Seats', 3, 1000, 19, 3000, 570)"
                )
            )
        command.upgrade(config, "head")
        with engine.begin() as connection:
            old = connection.execute(
                text(
                    "SELECT unit_amount, amount, tax, tax_inclusive FROM invoice_lines "
                    "WHERE id = 'il_old'"
                )
            ).one()
            totals = connection.execute(
                text("SELECT subtotal, tax, total FROM invoices WHERE id = 'in_old'")
            ).one()
        assert tuple(old) == (1000, 3000, 570, False)
        assert tuple(totals) == (3000, 570, 3570)

        def line(line_id, amount, tax, inclusive):
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO invoice_lines (id, invoice_id, description, quantity, "
                        "unit_amount, tax_rate, amount, tax, tax_inclusive) "
                        "VALUES (:id, 'in_old', 'Licence', 1, 1190, 19, :amount, :tax, "
                        ":inclusive)"
                    ),
                    {"id": line_id, "amount": amount, "tax": tax, "inclusive": inclusive},
                )

        line("il_inclusive", 1000, 190, True)
        # An inclusive line's net and tax add up to its gross; an exclusive one's amount is
        # its gross.
        for line_id, amount, tax, inclusive in (
            ("il_short", 1000, 189, True),
            ("il_net", 1000, 190, False),
        ):
            with pytest.raises(IntegrityError, match="amount_is_product"):
                line(line_id, amount, tax, inclusive)
        engine.dispose()
    finally:
        drop_scratch_database(server_database_url, url)
