"""/v1/customers"""

from __future__ import annotations

from flask import Blueprint

from billing.api.endpoint import ViewResult, customer_scope, endpoint
from billing.customers import customers as service
from billing.dunning import dunning
from billing.views import schemas
from billing.views.serializers import customer_out

bp = Blueprint("customers", __name__, url_prefix="/v1/customers")


@endpoint(
    bp,
    "",
    "POST",
    summary="Create a customer",
    body=schemas.CustomerCreate,
    response=schemas.CustomerOut,
    admin_only=True,
    errors=(400, 403, 409, 422),
)
def create_customer(body: schemas.CustomerCreate) -> ViewResult:
    customer, sync_job = service.create_customer(
        service.CustomerFields(
            name=body.name,
            email=body.email,
            currency=body.currency,
            address=body.address.model_dump(exclude_none=True) if body.address else None,
            tax_id=body.tax_id,
            tax_id_type=body.tax_id_type,
            tax_status=body.tax_status,
            metadata=body.metadata,
            locale=body.locale,
            billing_emails=body.billing_emails,
        )
    )
    return customer_out(customer, sync_job=sync_job), 200


@endpoint(
    bp,
    "",
    "GET",
    summary="List customers",
    query=schemas.CustomerListQuery,
    response=schemas.CustomerList,
    errors=(400,),
)
def list_customers(query: schemas.CustomerListQuery) -> ViewResult:
    page = service.list_customers(
        customer_scope=customer_scope(), limit=query.limit, starting_after=query.starting_after
    )
    return schemas.CustomerList(
        data=[customer_out(c) for c in page.items], has_more=page.has_more
    ), 200


@endpoint(
    bp,
    "/<customer_id>",
    "GET",
    summary="Retrieve a customer",
    response=schemas.CustomerOut,
    errors=(404,),
)
def get_customer(customer_id: str) -> ViewResult:
    return customer_out(service.get_customer(customer_id, customer_scope=customer_scope())), 200


@endpoint(
    bp,
    "/<customer_id>",
    "PATCH",
    summary="Update a customer (email and billing_emails: admin keys only)",
    body=schemas.CustomerUpdate,
    response=schemas.CustomerOut,
    errors=(400, 403, 404, 422),
)
def update_customer(customer_id: str, body: schemas.CustomerUpdate) -> ViewResult:
    changes = body.model_dump(exclude_unset=True)
    customer = service.update_customer(customer_id, changes, customer_scope=customer_scope())
    return customer_out(customer), 200


@endpoint(
    bp,
    "/<customer_id>/payment_method",
    "POST",
    summary="Attach a payment method on Stripe and make it the default",
    body=schemas.PaymentMethodAttach,
    response=schemas.CustomerOut,
    atomic=False,
    errors=(400, 402, 404, 409, 503),
)
def set_payment_method(customer_id: str, body: schemas.PaymentMethodAttach) -> ViewResult:
    customer = service.set_default_payment_method(
        customer_id, body.payment_method, customer_scope=customer_scope()
    )
    # Invoices held by a hard decline are retried at once. Should this process die first,
    # the next scheduled retry runs anyway: the hold is lifted by the new method itself.
    dunning.retry_after_new_payment_method(customer_id, body.payment_method)
    return customer_out(customer), 200
