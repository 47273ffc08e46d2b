"""Statements compiled once and sent as their SQL: for the few that every job runs.

SQLAlchemy's work per execution of even a cached statement (its cache key looked up,
every parameter constructed and processed, the result's types adapted) costs more CPU
than the round trip itself for the statements a mail or charge job runs a handful of:
about half a millisecond each on these machines. A `Prebuilt` statement is compiled for
the connection's dialect on first use and then executed with `exec_driver_sql`, so that
what remains per execution is psycopg2's own work. The statement is still built with
SQLAlchemy's expression language, so it is checked and quoted as any other; connection
events (the bench's round-trip counter, for one) still see it.

Only for statements with plain bind parameters: no expanding IN lists, no
literal-rendered values. Result values come back as psycopg2 gives them (bytea as a
memoryview, JSON as decoded by the driver)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Dialect
from sqlalchemy.sql.expression import Executable


@dataclass(frozen=True)
class _Compiled:
    dialect: Dialect
    sql: str
    defaults: dict[str, Any]  # every parameter, with the statement's own literal values
    processors: dict[str, Callable[[Any], Any]]


class Prebuilt:
    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled
        if compiled is not None and compiled.dialect is dialect:
            return compiled
        done = self.statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if done.positional:
            raise ValueError("Prebuilt supports named parameter styles only")
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in done.binds.items():
            if bind.expanding or bind.literal_execute:
                raise ValueError(f"Prebuilt cannot send parameter {name!r} as it is")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[bind.key] = processor
        defaults = {
            name: processors[name](value) if name in processors and value is not None else value
            for name, value in done.construct_params(_check=False).items()
        }
        compiled = _Compiled(dialect, done.string, defaults, processors)
        self._compiled = compiled
        return compiled

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        compiled = self._compile(connection.dialect)
        values = dict(compiled.defaults)
        for name, value in params.items():
            if name not in values:
                raise KeyError(f"the statement has no parameter {name!r}")
            processor = compiled.processors.get(name)
            values[name] = (
                processor(value) if processor is not None and value is not None else value
            )
        return connection.exec_driver_sql(compiled.sql, values)
