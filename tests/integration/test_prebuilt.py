"""Statements compiled once and sent as their SQL (billing.platform.prebuilt): the same answer as
SQLAlchemy's own execution, and a refusal of what they cannot send as it is."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Interval, bindparam, func, inspect, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import StatementError

from billing.extensions import db
from billing.models import OutboxJob
from billing.platform.prebuilt import Prebuilt

_jobs = OutboxJob.__table__


def test_a_prebuilt_statement_answers_as_sqlalchemy_does(app):
    statement = select(
        bindparam("b_document", type_=JSONB)["total"].astext.label("total"),
        (func.make_interval(0) + bindparam("b_wait", type_=Interval())).label("wait"),
        literal("fixed").label("fixed"),
    )
    params = {"b_document": {"total": 1200}, "b_wait": timedelta(seconds=90)}
    with db.engine.connect() as connection:
        ours = Prebuilt(statement).execute(connection, params).one()
        theirs = connection.execute(statement, params).one()
    assert (
        ours._asdict()
        == theirs._asdict()
        == {
            "total": "1200",
            "wait": timedelta(seconds=90),
            "fixed": "fixed",
        }
    )


def test_a_prebuilt_statement_refuses_a_parameter_it_does_not_have(app):
    statement = Prebuilt(select(_jobs.c.id).where(_jobs.c.id == bindparam("b_job_id")))
    with db.engine.connect() as connection, pytest.raises(KeyError, match="b_jobid"):
        statement.execute(connection, {"b_jobid": "job_1"})


def test_a_list_parameter_cannot_be_prebuilt(app):
    statement = Prebuilt(select(_jobs.c.id).where(_jobs.c.state.in_(("pending", "sent"))))
    with db.engine.connect() as connection, pytest.raises(ValueError, match="cannot send"):
        statement.execute(connection, {})


def test_models_load_from_a_prebuilt_statement_as_from_the_statement_itself(app, make_customer):
    from billing.models import Customer

    make_customer(name="First GmbH")
    make_customer(name="Second GmbH")
    # A value of the statement's own (the currency) rides along with the caller's.
    statement = (
        select(Customer)
        .where(Customer.name == bindparam("b_name"), Customer.currency == "eur")
        .with_for_update()
    )
    prebuilt = Prebuilt(statement)
    session = db.session()
    try:
        theirs = session.execute(statement, {"b_name": "Second GmbH"}).one()
        stale = theirs[0]
        # Renamed behind the session's back: the model it holds is out of date.
        session.execute(
            update(Customer.__table__)
            .where(Customer.__table__.c.id == stale.id)
            .values(name="Second AG")
        )
        ours = session.execute(
            prebuilt.for_orm(session.connection()),
            {"b_name": "Second AG"},
            execution_options={"populate_existing": True},
        ).one()
        # The same model, read afresh, every column in its place.
        assert ours[0] is stale
        row = session.execute(
            select(Customer.__table__).where(Customer.__table__.c.id == stale.id)
        ).one()
        attributes = inspect(Customer).column_attrs
        assert {a.key: getattr(ours[0], a.key) for a in attributes} == {
            a.key: row._mapping[a.columns[0]] for a in attributes
        }
        assert ours[0].name == "Second AG"
        # A parameter the caller must give is refused when missing, never sent as NULL.
        with pytest.raises(StatementError, match="b_name"):
            session.execute(prebuilt.for_orm(session.connection()))
        session.rollback()
        # Prepared once on this connection, and used again as it is.
        assert prebuilt.for_orm(session.connection()) is prebuilt.for_orm(session.connection())
    finally:
        session.rollback()
