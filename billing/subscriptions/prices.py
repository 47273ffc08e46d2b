"""Use cases for prices: what one unit of a product costs per month or year."""

from __future__ import annotations

from sqlalchemy import select

from billing.domain.money import charge_step, normalize_currency
from billing.extensions import db
from billing.invoicing.rules import MAX_AMOUNT
from billing.models import Price
from billing.platform.errors import InvalidRequest, NotFound, UnchargeableAmount
from billing.platform.logging import get_logger
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.subscriptions.rules import Interval
from billing.taxes.rules import TaxCategory

log = get_logger(__name__)


def create_price(
    *,
    product: str,
    unit_amount: int,
    currency: str,
    interval: Interval,
    tax_category: TaxCategory = TaxCategory.STANDARD,
) -> Price:
    if not 0 <= unit_amount <= MAX_AMOUNT:
        raise InvalidRequest(f"unit_amount lies between 0 and {MAX_AMOUNT}", param="unit_amount")
    step = charge_step(currency)
    if unit_amount % step:
        raise UnchargeableAmount(
            f"unit_amount must be a multiple of {step} in {currency.upper()} (Stripe charges "
            "it no finer)",
            param="unit_amount",
        )
    with transaction() as session:
        price = Price(
            product=product,
            unit_amount=unit_amount,
            currency=normalize_currency(currency),
            interval=interval.value,
            tax_category=tax_category.value,
        )
        session.add(price)
    log.info("price.created", price_id=price.id)
    return price


def get_price(price_id: str, *, param: str = "id") -> Price:
    price = db.session.get(Price, price_id)
    if price is None:
        raise NotFound(f"No such price: '{price_id}'", param=param)
    return price


def list_prices(*, limit: int, starting_after: str | None) -> Page[Price]:
    return paginate(select(Price), Price.id, limit, starting_after)
