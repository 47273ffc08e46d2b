"""/v1/prices"""

from __future__ import annotations

from flask import Blueprint

from billing.api.endpoint import ViewResult, endpoint
from billing.subscriptions import prices as service
from billing.views import schemas
from billing.views.serializers import price_out

bp = Blueprint("prices", __name__, url_prefix="/v1/prices")


@endpoint(
    bp,
    "",
    "POST",
    summary="Create a price: an amount per unit and interval, in one currency",
    body=schemas.PriceCreate,
    response=schemas.PriceOut,
    admin_only=True,
    errors=(400, 403, 422),
)
def create_price(body: schemas.PriceCreate) -> ViewResult:
    price = service.create_price(
        product=body.product,
        unit_amount=body.unit_amount,
        currency=body.currency,
        interval=body.interval,
        tax_category=body.tax_category,
    )
    return price_out(price), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List prices, newest first",
    query=schemas.PriceListQuery,
    response=schemas.PriceList,
    errors=(400,),
)
def list_prices(query: schemas.PriceListQuery) -> ViewResult:
    page = service.list_prices(limit=query.limit, starting_after=query.starting_after)
    return schemas.PriceList(data=[price_out(p) for p in page.items], has_more=page.has_more), 200


@endpoint(
    bp,
    "/<price_id>",
    "GET",
    summary="Retrieve a price",
    response=schemas.PriceOut,
    errors=(404,),
)
def get_price(price_id: str) -> ViewResult:
    return price_out(service.get_price(price_id)), 200
