"""Flask extensions, created unbound so that nothing is configured at import time."""

import time
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, MetaData, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase

# Deterministic constraint names, so that Alembic revisions can name what they drop.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


# A pooled connection unused for this long is pinged before it is handed out: a PostgreSQL
# restart or a cut on the way shows up then, and the pool replaces it. One in steady use
# is not: a ping before every checkout would cost every transaction another round trip,
# and a connection that dies while busy fails its transaction either way (nothing is
# committed; the pool then drops every connection older than that failure).
PING_AFTER_IDLE_SECONDS = 5.0


def ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine.pool, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another (a fresh one).
            raise DisconnectionError(f"idle connection lost: {exc}") from exc
