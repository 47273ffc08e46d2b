"""Use cases for business customers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select

from billing.adapters.stripe_gateway import StripeRateLimited, StripeRejected, StripeUnavailable
from billing.domain import metadata
from billing.domain.money import normalize_currency
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.models import Customer, Invoice
from billing.platform import context, jobs, ledger
from billing.platform.errors import (
    Conflict,
    HeldElsewhere,
    InvalidRequest,
    NotFound,
    PermanentJobError,
    PermissionDenied,
    ServiceError,
    TransientJobError,
)
from billing.platform.ledger import Claim
from billing.platform.logging import get_logger
from billing.platform.outbox import JobWork, record_job
from billing.platform.pagination import Page, paginate
from billing.platform.unit_of_work import transaction
from billing.taxes import tax_rates
from billing.taxes.rules import TaxIdType, TaxStatus

log = get_logger(__name__)

LEDGER_SCOPE_STRIPE_CUSTOMER = "stripe.customer.create"
# Where invoices, receipts and payment-failure notices are mailed: only an admin key may
# change them, or a customer key could have seller-branded mail sent to any address.
MAIL_TARGETS = ("email", "billing_emails")


@dataclass(frozen=True)
class CustomerFields:
    name: str
    email: str
    currency: str
    address: dict[str, Any] | None = None
    tax_id: str | None = None
    tax_id_type: TaxIdType | None = None
    tax_status: TaxStatus = TaxStatus.BUSINESS
    metadata: dict[str, str] | None = None
    locale: str = "en_US"
    billing_emails: list[str] | None = None


class MetadataLimitExceeded(ServiceError):
    code = "metadata_limit_exceeded"
    status = 400


def _visible(customer_id: str, customer_scope: str | None) -> bool:
    return customer_scope is None or customer_scope == customer_id


def get_customer(customer_id: str, *, customer_scope: str | None = None) -> Customer:
    """A customer key asking for another customer gets the same answer as for a missing one."""
    customer = (
        db.session.get(Customer, customer_id) if _visible(customer_id, customer_scope) else None
    )
    if customer is None:
        raise NotFound(f"No such customer: '{customer_id}'", param="id")
    return customer


def list_customers(
    *, customer_scope: str | None, limit: int, starting_after: str | None
) -> Page[Customer]:
    query = select(Customer)
    if customer_scope is not None:
        query = query.where(Customer.id == customer_scope)
    return paginate(query, Customer.id, limit, starting_after)


def create_customer(fields: CustomerFields) -> tuple[Customer, str]:
    """The new customer and the id of the job that creates it on Stripe."""
    with transaction() as session:
        customer = Customer(
            name=fields.name,
            email=fields.email,
            currency=normalize_currency(fields.currency),
            address=fields.address,
            tax_id=tax_rates.compact_tax_id(fields.tax_id_type, fields.tax_id),
            tax_id_type=fields.tax_id_type.value if fields.tax_id_type else None,
            tax_status=fields.tax_status.value,
            metadata_=fields.metadata or {},
            locale=fields.locale,
            billing_emails=list(fields.billing_emails or []),
        )
        session.add(customer)
        session.flush()
        job_id = record_job(session, jobs.SYNC_CUSTOMER, customer_id=customer.id)
        events.record(session, EventType.CUSTOMER_CREATED, customer.id, customer.id)
    log.info("customer.created", customer_id=customer.id, job_id=job_id)
    return customer, job_id


def update_customer(
    customer_id: str, changes: dict[str, Any], *, customer_scope: str | None = None
) -> Customer:
    with transaction() as session:
        customer = get_customer(customer_id, customer_scope=customer_scope)
        session.refresh(customer, with_for_update=True)
        if customer_scope is not None:
            for target in MAIL_TARGETS:
                if target in changes and changes[target] != getattr(customer, target):
                    raise PermissionDenied(
                        f"{target} is changed by the seller: this needs an admin API key",
                        param=target,
                    )
        if "currency" in changes and normalize_currency(changes["currency"]) != customer.currency:
            has_invoices = session.scalar(
                select(exists().where(Invoice.customer_id == customer.id))
            )
            if has_invoices:
                raise InvalidRequest(
                    "the currency of a customer with invoices cannot change", param="currency"
                )
            customer.currency = normalize_currency(changes["currency"])
        for field in ("name", "email", "address", "locale", "billing_emails"):
            if field in changes:
                setattr(customer, field, changes[field])
        if "tax_status" in changes:
            customer.tax_status = TaxStatus(changes["tax_status"]).value
        if "tax_id" in changes or "tax_id_type" in changes:
            # The id and its type are checked together, whichever of the two changed; a
            # bad one raises inside the transaction, so nothing else changes either.
            tax_id = changes.get("tax_id", customer.tax_id)
            kind = changes.get("tax_id_type", customer.tax_id_type)
            kind = TaxIdType(kind) if kind is not None else None
            customer.tax_id = tax_rates.compact_tax_id(kind, tax_id)
            customer.tax_id_type = kind.value if kind is not None and tax_id is not None else None
        if "metadata" in changes:
            try:
                customer.metadata_ = metadata.merge(customer.metadata_, changes["metadata"] or {})
            except metadata.MetadataTooLarge as exc:
                # Raised inside the transaction: the other fields' changes roll back too.
                raise MetadataLimitExceeded(str(exc), param=exc.param) from exc
        events.record(session, EventType.CUSTOMER_UPDATED, customer.id, customer.id)
    log.info("customer.updated", customer_id=customer_id, fields=sorted(changes))
    return customer


def sync_customer_to_stripe(customer_id: str, *, work: JobWork | None = None) -> str:
    """Create the customer on Stripe exactly once and store its id. Safe to run many times:
    our ledger claims the creation first, and an attempt whose answer was lost is
    reconciled by looking for our ledger key in Stripe customers' metadata."""
    customer = db.session.get(Customer, customer_id)
    if customer is None:
        raise PermanentJobError(f"customer {customer_id} does not exist")
    if customer.stripe_customer_id:
        return customer.stripe_customer_id
    name, email = customer.name, customer.email
    db.session.commit()  # never hold a transaction open across the network call

    ledger_key = f"customer:{customer_id}"
    claimed = ledger.claim(
        LEDGER_SCOPE_STRIPE_CUSTOMER, ledger_key, customer_id, lease=context.stripe_call_lease()
    )
    gateway = (work or JobWork.outside_a_job()).gateways.stripe
    stripe_id: str | None = None
    if claimed.claim is Claim.IN_PROGRESS:
        raise HeldElsewhere(
            f"another worker is creating customer {customer_id} on Stripe",
            retry_after=context.stripe_call_lease().total_seconds(),
        )
    if claimed.claim is Claim.DONE:
        stripe_id = (claimed.outcome or {}).get("stripe_customer_id")
        if not stripe_id:
            raise PermanentJobError(f"Stripe refused customer {customer_id} before")
    elif claimed.claim is Claim.RESUMED:
        try:
            stripe_id = gateway.find_customer_by_metadata("ledger_key", ledger_key)
        except StripeUnavailable as exc:
            ledger.mark_unknown(claimed)
            raise TransientJobError(f"Stripe unavailable while reconciling: {exc}") from exc
        if stripe_id:
            log.info("customer.stripe_reconciled", customer_id=customer_id, stripe_id=stripe_id)
    if stripe_id is None:
        try:
            stripe_id = gateway.create_customer(
                name=name,
                email=email,
                metadata={"billing_customer_id": customer_id, "ledger_key": ledger_key},
                idempotency_key=ledger_key,
            )
        except StripeUnavailable as exc:
            ledger.mark_unknown(claimed)
            raise TransientJobError(f"Stripe unavailable: {exc}") from exc
        except StripeRejected as exc:
            with transaction():
                ledger.complete(claimed, "failed", outcome={"error": exc.message})
            raise PermanentJobError(f"Stripe refused the customer: {exc.message}") from exc

    try:
        with transaction() as session:
            customer = session.get(Customer, customer_id, with_for_update=True)
            assert customer is not None
            customer.stripe_customer_id = stripe_id
            ledger.complete(claimed, "succeeded", outcome={"stripe_customer_id": stripe_id})
    except ledger.LeaseLost as exc:
        # A later attempt took over (we outlived our lease); it records the outcome.
        raise TransientJobError(f"customer {customer_id} sync was taken over") from exc
    log.info("customer.synced_to_stripe", customer_id=customer_id, stripe_customer_id=stripe_id)
    return stripe_id


class PaymentMethodRejected(ServiceError):
    code = "payment_method_rejected"
    status = 402


class StripeUnavailableError(ServiceError):
    code = "stripe_unavailable"
    status = 503
    retryable = True


class CustomerNotSynced(Conflict):
    code = "customer_not_synced"
    retryable = True


def set_default_payment_method(
    customer_id: str, payment_method: str, *, customer_scope: str | None = None
) -> Customer:
    """Attach a payment method on Stripe and make it the default, synchronously, so the
    caller learns at once whether Stripe accepted the card."""
    customer = get_customer(customer_id, customer_scope=customer_scope)
    try:
        stripe_customer_id = customer.stripe_customer_id or sync_customer_to_stripe(customer_id)
    except TransientJobError as exc:
        raise CustomerNotSynced(
            "the customer is still being created on Stripe; retry in a few seconds"
        ) from exc
    except PermanentJobError as exc:
        raise CustomerNotSynced(str(exc)) from exc
    db.session.commit()
    try:
        context.stripe_gateway().attach_default_payment_method(
            stripe_customer_id=stripe_customer_id,
            payment_method=payment_method,
            idempotency_key=f"pm:{customer_id}:{payment_method}",
        )
    except StripeRejected as exc:
        raise PaymentMethodRejected(exc.message, param="payment_method") from exc
    except (StripeUnavailable, StripeRateLimited) as exc:
        raise StripeUnavailableError("Stripe did not answer; retry later") from exc
    with transaction() as session:
        customer = get_customer(customer_id)
        session.refresh(customer, with_for_update=True)
        customer.default_payment_method = payment_method
        events.record(session, EventType.CUSTOMER_UPDATED, customer.id, customer.id)
    log.info("customer.payment_method_set", customer_id=customer_id)
    return customer
