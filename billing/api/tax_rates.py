"""/v1/tax_rates"""

from __future__ import annotations

from flask import Blueprint

from billing.api.endpoint import ViewResult, endpoint
from billing.taxes import tax_rates as service
from billing.views import schemas
from billing.views.serializers import tax_rate_out

bp = Blueprint("tax_rates", __name__, url_prefix="/v1/tax_rates")


@endpoint(
    bp,
    "",
    "POST",
    summary="Create a tax rate: a percentage of a country (and region) for a tax category",
    body=schemas.TaxRateCreate,
    response=schemas.TaxRateOut,
    admin_only=True,
    errors=(400, 403, 422),
)
def create_tax_rate(body: schemas.TaxRateCreate) -> ViewResult:
    rate = service.create_tax_rate(
        service.TaxRateFields(
            display_name=body.display_name,
            percentage=body.percentage,
            country=body.country,
            region=body.region,
            inclusive=body.inclusive,
            tax_category=body.tax_category,
        )
    )
    return tax_rate_out(rate), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List tax rates, newest first",
    query=schemas.TaxRateListQuery,
    response=schemas.TaxRateList,
    errors=(400,),
)
def list_tax_rates(query: schemas.TaxRateListQuery) -> ViewResult:
    page = service.list_tax_rates(
        active=query.active, limit=query.limit, starting_after=query.starting_after
    )
    return schemas.TaxRateList(
        data=[tax_rate_out(r) for r in page.items], has_more=page.has_more
    ), 200


@endpoint(
    bp,
    "/<tax_rate_id>",
    "GET",
    summary="Retrieve a tax rate",
    response=schemas.TaxRateOut,
    errors=(404,),
)
def get_tax_rate(tax_rate_id: str) -> ViewResult:
    return tax_rate_out(service.get_tax_rate(tax_rate_id)), 200


@endpoint(
    bp,
    "/<tax_rate_id>",
    "POST",
    summary="Archive a tax rate (active: false): new lines no longer take it",
    body=schemas.TaxRateArchive,
    response=schemas.TaxRateOut,
    admin_only=True,
    errors=(400, 403, 404),
)
def archive_tax_rate(tax_rate_id: str, body: schemas.TaxRateArchive) -> ViewResult:
    return tax_rate_out(service.archive_tax_rate(tax_rate_id)), 200
