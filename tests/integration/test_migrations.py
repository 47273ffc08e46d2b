from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

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
