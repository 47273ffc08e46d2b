"""Use cases for tax rates, and the rates the rules choose for a customer's lines."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.extensions import db
from billing.models import Customer, TaxRate
from billing.platform import context
from billing.platform.errors import Conflict, InvalidRequest, NotFound
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.taxes import rules
from billing.taxes.rules import TaxCategory, TaxDecision, TaxIdType, TaxReason, TaxStatus

log = get_logger(__name__)


class TaxRateArchived(Conflict):
    code = "tax_rate_archived"


class TaxIdInvalid(InvalidRequest):
    code = "tax_id_invalid"
    status = 400


@dataclass(frozen=True)
class TaxRateFields:
    display_name: str
    percentage: Decimal
    country: str
    region: str | None = None
    inclusive: bool = False
    tax_category: TaxCategory = TaxCategory.STANDARD


def create_tax_rate(fields: TaxRateFields) -> TaxRate:
    with transaction() as session:
        rate = TaxRate(
            display_name=fields.display_name,
            percentage=fields.percentage,
            country=fields.country,
            region=fields.region,
            inclusive=fields.inclusive,
            tax_category=fields.tax_category.value,
            active=True,
        )
        session.add(rate)
    log.info("tax_rate.created", tax_rate_id=rate.id, country=rate.country)
    return rate


def get_tax_rate(tax_rate_id: str, *, param: str = "id") -> TaxRate:
    rate = db.session.get(TaxRate, tax_rate_id)
    if rate is None:
        raise NotFound(f"No such tax rate: '{tax_rate_id}'", param=param)
    return rate


def list_tax_rates(*, active: bool | None, limit: int, starting_after: str | None) -> Page[TaxRate]:
    query = select(TaxRate)
    if active is not None:
        query = query.where(TaxRate.active.is_(active))
    return paginate(query, TaxRate.id, limit, starting_after)


def archive_tax_rate(tax_rate_id: str) -> TaxRate:
    """Chosen no more for new lines; the lines that used it keep it, and their percentage."""
    with transaction() as session:
        rate = session.get(TaxRate, tax_rate_id, with_for_update=True)
        if rate is None:
            raise NotFound(f"No such tax rate: '{tax_rate_id}'", param="id")
        rate.active = False
    log.info("tax_rate.archived", tax_rate_id=tax_rate_id)
    return rate


def compact_tax_id(
    kind: TaxIdType | None, value: str | None, *, param: str = "tax_id"
) -> str | None:
    """The id as stored: compact once checked when its type is given; as given if not."""
    if value is None or kind is None:
        return value
    try:
        return rules.validate_tax_id(kind, value)
    except rules.TaxIdInvalid as exc:
        raise TaxIdInvalid(str(exc), param=param) from exc


def buyer_of(customer: Customer) -> rules.Buyer:
    address: dict[str, Any] = customer.address or {}
    kind = TaxIdType(customer.tax_id_type) if customer.tax_id and customer.tax_id_type else None
    return rules.Buyer(
        country=address.get("country"),
        region=address.get("state"),
        status=TaxStatus(customer.tax_status or TaxStatus.BUSINESS),
        tax_id_type=kind,
    )


def active_rates(session: Session) -> list[rules.RateOption]:
    """The rates the rules may choose: active and exclusive (billing.taxes.rules)."""
    return [
        rules.RateOption(
            id=rate.id,
            percentage=rate.percentage,
            country=rate.country,
            category=TaxCategory(rate.tax_category),
            region=rate.region,
        )
        for rate in session.scalars(
            select(TaxRate).where(TaxRate.active.is_(True), TaxRate.inclusive.is_(False))
        )
    ]


class TaxBook:
    """The rules with the seller's country and the active rates, read once for however
    many customers' lines (a billing run's chunk)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seller_country = context.settings().seller_country
        self._rates: list[rules.RateOption] | None = None

    def decide(self, customer: Customer, category: TaxCategory) -> TaxDecision:
        if self._rates is None:
            self._rates = active_rates(self.session)
        return rules.decide(
            seller_country=self.seller_country,
            buyer=buyer_of(customer),
            category=category,
            rates=self._rates,
        )


def chosen_rate(session: Session, tax_rate_id: str, *, param: str) -> TaxDecision:
    """A rate object the caller picked for a line: its percentage, `manual`."""
    rate = session.get(TaxRate, tax_rate_id)
    if rate is None:
        raise NotFound(f"No such tax rate: '{tax_rate_id}'", param=param)
    if not rate.active:
        raise TaxRateArchived(f"tax rate '{tax_rate_id}' is archived", param=param)
    return TaxDecision(rate.percentage, TaxReason.MANUAL, rate.id, inclusive=rate.inclusive)
