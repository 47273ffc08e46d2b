"""Alembic environment: one migrator at a time, and short lock waits.

An advisory lock makes a second `billing db upgrade` (two deploys at once) wait instead
of racing; a lock_timeout makes a migration that would queue behind live traffic fail
fast instead of blocking every request behind it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

import billing.models  # noqa: F401  (registers the tables on the metadata)
from billing.config import Settings
from billing.extensions import db

MIGRATION_LOCK_ID = 0x6B696C6C  # any constant shared by every migrator of this database

config = context.config
target_metadata = db.metadata


def _database_url() -> str:
    return (
        config.attributes.get("database_url") or Settings.from_env().database_url.get_secret_value()
    )


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    connection.execute(text("SET lock_timeout = '5s'"))
    connection.commit()
    try:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
