"""Statements compiled once and sent as their SQL (billing.platform.prebuilt): the same answer as
SQLAlchemy's own execution, and a refusal of what they cannot send as it is."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Interval, bindparam, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB

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
