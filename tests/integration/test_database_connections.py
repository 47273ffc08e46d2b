"""Pooled PostgreSQL connections: one cut while idle is replaced before anyone uses it."""

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from billing import extensions
from billing.extensions import db


def _terminate(app, pid: int) -> None:
    outsider = create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=NullPool)
    with outsider.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    outsider.dispose()


def test_a_connection_cut_while_idle_is_replaced_before_use(app, monkeypatch):
    monkeypatch.setattr(extensions, "PING_AFTER_IDLE_SECONDS", 0.0)
    cut = db.session.scalar(text("SELECT pg_backend_pid()"))
    db.session.commit()  # back to the pool, idle
    _terminate(app, cut)
    assert db.session.scalar(text("SELECT pg_backend_pid()")) != cut


def test_a_connection_in_steady_use_is_not_pinged(app, monkeypatch):
    monkeypatch.setattr(extensions, "PING_AFTER_IDLE_SECONDS", 3600.0)
    cut = db.session.scalar(text("SELECT pg_backend_pid()"))
    db.session.commit()
    _terminate(app, cut)
    # Cut while (as far as the pool knows) in use: the next transaction fails, commits
    # nothing, and the pool replaces the connection for the one after.
    with pytest.raises(OperationalError):
        db.session.scalar(text("SELECT 1"))
    db.session.rollback()
    assert db.session.scalar(text("SELECT pg_backend_pid()")) != cut
