"""The events the service records, and what each is about. Pure.

An event is recorded in the transaction of the change it describes, with a snapshot of
the object as the API shows it. Its `sequence` is drawn from one counter for all events,
after the change has locked its object's row: the events of one object therefore carry
growing sequence numbers in the order their changes committed (with gaps, since other
objects draw from the same counter). A receiver keeps, per object, the highest sequence it
applied and drops anything older.
"""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    CUSTOMER_CREATED = "customer.created"
    CUSTOMER_UPDATED = "customer.updated"
    INVOICE_CREATED = "invoice.created"
    INVOICE_FINALIZED = "invoice.finalized"
    # A billing run left the invoice a draft: it could not yield the e-invoice required.
    INVOICE_FINALIZATION_FAILED = "invoice.finalization_failed"
    INVOICE_PAID = "invoice.paid"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
    INVOICE_PAYMENT_ACTION_REQUIRED = "invoice.payment_action_required"
    INVOICE_VOIDED = "invoice.voided"
    INVOICE_MARKED_UNCOLLECTIBLE = "invoice.marked_uncollectible"
    INVOICE_OVERDUE = "invoice.overdue"
    # What a customer did on the invoice's hosted page.
    INVOICE_PAYMENT_REQUESTED = "invoice.payment_requested"
    INVOICE_PAYMENT_METHOD_SAVED = "invoice.payment_method_saved"
    INVOICE_LINK_REQUESTED = "invoice.link_requested"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_UPDATED = "subscription.updated"
    SUBSCRIPTION_CANCELED = "subscription.canceled"
    SUBSCRIPTION_TRIAL_WILL_END = "subscription.trial_will_end"
    CREDIT_NOTE_CREATED = "credit_note.created"
    CREDIT_NOTE_VOIDED = "credit_note.voided"
    CUSTOMER_BALANCE_TRANSACTION_CREATED = "customer_balance_transaction.created"
    COUPON_CREATED = "coupon.created"
    COUPON_DELETED = "coupon.deleted"
    PROMOTION_CODE_CREATED = "promotion_code.created"
    PROMOTION_CODE_UPDATED = "promotion_code.updated"
    DISCOUNT_CREATED = "discount.created"
    DISCOUNT_DELETED = "discount.deleted"
    DUNNING_STEP_TAKEN = "dunning.step_taken"
    EMAIL_SENT = "email.sent"
    EMAIL_FAILED = "email.failed"

    @property
    def object_type(self) -> str:
        """The kind of object its snapshot shows: the type's first segment, except for a
        dunning step, which is about its invoice."""
        prefix = self.value.split(".", 1)[0]
        return "invoice" if prefix == "dunning" else prefix


EVENT_TYPES = tuple(t.value for t in EventType)
OBJECT_TYPES = (
    "customer",
    "invoice",
    "refund",
    "subscription",
    "email",
    "credit_note",
    "customer_balance_transaction",
    "coupon",
    "promotion_code",
    "discount",
)
# A webhook endpoint subscribed to this receives every type, those added later included.
ALL_TYPES = "*"


def unknown_types(requested: list[str]) -> list[str]:
    """The requested event types this service does not record (ALL_TYPES is known)."""
    return [t for t in requested if t != ALL_TYPES and t not in EVENT_TYPES]
