"""Statements compiled once and sent as their SQL: for the few that every job runs.

SQLAlchemy's work per execution of even a cached statement (its cache key looked up,
every parameter constructed and processed, the result's types adapted) costs more CPU
than the round trip itself for the statements a mail or charge job runs a handful of,
a cost every job would pay again. A `Prebuilt` statement is compiled for
the connection's dialect on first use and then executed with `exec_driver_sql`, so that
what remains per execution is psycopg2's own work. The statement is still built with
SQLAlchemy's expression language, so it is checked and quoted as any other; connection
events (the bench's round-trip counter, for one) still see it.

PostgreSQL would still parse and plan the text on every execution, which for a statement
of a few CTEs costs as much again. So each connection PREPAREs it once (its parameters
typed from the statement's own), and executions send EXECUTE with the values: planned
once per connection, the plan reused.

Only for statements with plain bind parameters: no expanding IN lists, no
literal-rendered values. Result values come back as psycopg2 gives them (bytea as a
memoryview, JSON as decoded by the driver)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Dialect, bindparam, text
from sqlalchemy.sql.expression import Executable

_PARAMETER = re.compile(r"%\((\w+)\)s")
# The JSON path of `args["delivery_id"].astext` is a text key; its own type has no SQL name.
_SQL_TYPE_OF = {"JSONStrIndexType": "TEXT", "JSONIntIndexType": "INTEGER"}
# Where each connection keeps the names it has prepared: the pool entry's info lives
# exactly as long as its DBAPI connection, and so do the prepared statements.
_PREPARED = "billing_prepared_statements"


@dataclass(frozen=True)
class _Compiled:
    dialect: Dialect
    sql: str
    defaults: dict[str, Any]  # every parameter, with the statement's own literal values
    processors: dict[str, Callable[[Any], Any]]
    name: str
    prepare: str
    execute: str
    parameters: tuple[str, ...]  # in the order EXECUTE takes them


def _sql_type(bind: Any, dialect: Dialect) -> str:
    named = _SQL_TYPE_OF.get(type(bind.type).__name__)
    return named if named is not None else str(bind.type.compile(dialect=dialect))


class Prebuilt:
    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None
        self._orm: tuple[Dialect, Executable] | None = None

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
                processors[name] = processor
        defaults = {
            name: processors[name](value) if name in processors and value is not None else value
            for name, value in done.construct_params(_check=False).items()
        }
        order = list(dict.fromkeys(_PARAMETER.findall(done.string)))
        if "%%" in done.string or set(order) != set(defaults):
            raise ValueError("Prebuilt cannot prepare this statement's text as it is")
        binds = done.binds  # by the names in the text (and anonymous keys, unused here)
        number = {name: index for index, name in enumerate(order, 1)}
        body = _PARAMETER.sub(lambda match: f"${number[match.group(1)]}", done.string)
        name = "billing_" + hashlib.sha256(body.encode()).hexdigest()[:20]
        types = ", ".join(_sql_type(binds[parameter], dialect) for parameter in order)
        compiled = _Compiled(
            dialect,
            done.string,
            defaults,
            processors,
            name,
            f"PREPARE {name} ({types}) AS {body}",
            f"EXECUTE {name} ({', '.join(f'%({parameter})s' for parameter in order)})",
            tuple(order),
        )
        self._compiled = compiled
        return compiled

    def _prepared(self, connection: Connection) -> _Compiled:
        compiled = self._compile(connection.dialect)
        prepared: set[str] = connection.connection.info.setdefault(_PREPARED, set())
        if compiled.name not in prepared:
            connection.exec_driver_sql(compiled.prepare)
            prepared.add(compiled.name)
        return compiled

    def for_orm(self, connection: Connection) -> Executable:
        """This statement (a select of models) as the ORM runs it from its EXECUTE: the
        same models as from the statement itself, its result columns matched by position,
        and planned once per connection. Executed through the session with the statement's
        parameters (`session.execute(prebuilt.for_orm(session.connection()), params)`);
        meant for the session's own connection, which it prepares on. Built once: a new
        ORM statement per execution would cost its cache key every time."""
        compiled = self._prepared(connection)
        if self._orm is None or self._orm[0] is not compiled.dialect:
            done = self.statement.compile(dialect=compiled.dialect)  # type: ignore[attr-defined]
            own = done.construct_params(_check=False)
            call = ", ".join(f":{parameter}" for parameter in compiled.parameters)
            textual = (
                text(f"EXECUTE {compiled.name} ({call})")
                .bindparams(
                    *(
                        # The caller's own (no value in the statement) must be given.
                        bindparam(p, type_=done.binds[p].type, required=True)
                        if own[p] is None
                        else bindparam(p, own[p], type_=done.binds[p].type)
                        for p in compiled.parameters
                    )
                )
                .columns(*self.statement.selected_columns)  # type: ignore[attr-defined]
            )
            orm = self.statement.from_statement(textual)  # type: ignore[attr-defined]
            self._orm = (compiled.dialect, orm)
        return self._orm[1]

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        compiled = self._prepared(connection)
        values = dict(compiled.defaults)
        for name, value in params.items():
            if name not in values:
                raise KeyError(f"the statement has no parameter {name!r}")
            processor = compiled.processors.get(name)
            values[name] = (
                processor(value) if processor is not None and value is not None else value
            )
        return connection.exec_driver_sql(compiled.execute, values)
