"""Stripe-style cursor pagination: newest first, `starting_after` an id, `has_more`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select

from billing.extensions import db

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def paginate(
    query: Select[Any], id_column: Any, limit: int, starting_after: str | None
) -> Page[Any]:
    # Ids are ULIDs, so ordering by id is ordering by creation, and the cursor is the id.
    if starting_after is not None:
        query = query.where(id_column < starting_after)
    rows = list(db.session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)
