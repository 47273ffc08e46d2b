"""What a customer does on an invoice's hosted page: pay with the saved card, save a new
card (and pay with it), and ask for a new link. Every payment goes through the charge
attempts the API and dunning use, so that a double click, a second tab or a reload finds
the attempt in flight instead of starting another; every action is recorded as an event.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.adapters.stripe_gateway import StripeRateLimited, StripeRejected, StripeUnavailable
from billing.charging import charges
from billing.customers import customers
from billing.dunning import dunning
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.hosted import pages
from billing.models import Customer, Invoice
from billing.notifications.emails import recipients_of
from billing.operations import operations
from billing.platform import context
from billing.platform.errors import Conflict, PermanentJobError, ServiceError, TransientJobError
from billing.platform.logging import get_logger
from billing.platform.unit_of_work import transaction

log = get_logger(__name__)

SOURCE = "hosted_page"


class CardNotSaved(Conflict):
    code = "card_not_saved"


def pay_with_saved_card(invoice: Invoice) -> charges.ChargeRequest:
    """A charge of the customer's saved card for what is due, or the one in flight."""
    if not invoice.customer.default_payment_method:
        raise charges.InvoiceNotPayable("there is no saved card to pay with", param="card")
    return charges.request_charge(
        invoice.id,
        source=SOURCE,
        daily_attempt_cap=context.settings().pay_attempts_per_invoice_per_day,
        event=EventType.INVOICE_PAYMENT_REQUESTED,
    )


@dataclass(frozen=True)
class CardSetup:
    client_secret: str


def start_card_setup(invoice: Invoice) -> CardSetup:
    """A SetupIntent for the invoice's customer: Stripe.js confirms it with the card the
    customer types (and any 3-D Secure), then `save_card` makes that card the default."""
    customer = invoice.customer
    stripe_customer_id = customer.stripe_customer_id or _synced(customer)
    try:
        intent = context.stripe_gateway().create_setup_intent(
            stripe_customer_id=stripe_customer_id,
            metadata={"invoice_number": invoice.number or "", "source": SOURCE},
        )
    except (StripeUnavailable, StripeRateLimited) as exc:
        raise customers.StripeUnavailableError(
            "Stripe did not answer; try again in a moment"
        ) from exc
    assert intent.client_secret is not None
    return CardSetup(intent.client_secret)


def _synced(customer: Customer) -> str:
    try:
        return customers.sync_customer_to_stripe(customer.id)
    except (TransientJobError, PermanentJobError) as exc:
        raise customers.StripeUnavailableError(
            "we could not reach Stripe; try again in a moment"
        ) from exc


@dataclass(frozen=True)
class SavedCard:
    retries_started: list[str]
    charge: charges.ChargeRequest | None


def save_card(invoice: Invoice, setup_intent_id: str, *, pay: bool) -> SavedCard:
    """Make the card a confirmed SetupIntent saved the customer's default, as the API's
    own card change does: invoices held after a hard decline are retried at once. With
    `pay`, this invoice is then charged unless that retry (or another attempt) is already
    on its way. Stripe's word on the SetupIntent is the truth, never the page's."""
    customer = invoice.customer
    try:
        intent = context.stripe_gateway().retrieve_setup_intent(setup_intent_id)
    except StripeRejected as exc:
        raise CardNotSaved("that card setup is unknown", param="setup_intent") from exc
    except (StripeUnavailable, StripeRateLimited) as exc:
        raise customers.StripeUnavailableError(
            "Stripe did not answer; try again in a moment"
        ) from exc
    if (
        intent.stripe_customer_id != customer.stripe_customer_id
        or intent.status != "succeeded"
        or not intent.payment_method
    ):
        raise CardNotSaved("the card was not confirmed", param="setup_intent")
    customers.set_default_payment_method(customer.id, intent.payment_method)
    with transaction() as session:
        events.record(
            session, EventType.INVOICE_PAYMENT_METHOD_SAVED, invoice.id, invoice.customer_id
        )
    started = dunning.retry_after_new_payment_method(customer.id, intent.payment_method)
    charge = None
    # A customer who replaces the card on the page of an invoice whose last charge was
    # declined means that card for it: it is retried now, not on dunning's next day.
    if not pay:
        attempts = pages.attempts_of(invoice)
        pay = bool(attempts) and attempts[0].status == "failed"
    if pay and not started:
        db.session.refresh(invoice)
        charge = pay_with_saved_card(invoice)
    log.info("hosted.card_saved", invoice_id=invoice.id, retries=started, paid=charge is not None)
    return SavedCard(started, charge)


def send_new_link(invoice_id: str, address: str) -> bool:
    """Send the invoice's email again (it carries a fresh link) when `address` is one the
    customer receives invoices at. Says whether it did; the page never tells."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None or address.strip().lower() not in {
        a.lower() for a in recipients_of(invoice.customer)
    }:
        return False
    db.session.rollback()
    try:
        operations.resend_invoice_email(invoice_id, "invoice_issued")
    except ServiceError as exc:
        log.info("hosted.new_link_not_sent", invoice_id=invoice_id, reason=str(exc))
        return False
    with transaction() as session:
        events.record(session, EventType.INVOICE_LINK_REQUESTED, invoice.id, invoice.customer_id)
    return True
