"""SQLAlchemy models. Constraints live here and in the database, the last wall."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.balances.rules import BalanceTransactionType
from billing.charging import rules as charge_rules
from billing.charging.rules import ChargeStatus
from billing.credit_notes.rules import CreditNoteReason, CreditNoteStatus
from billing.discounts.rules import CouponDuration
from billing.domain.jobs import REPLAYABLE, UNFINISHED, JobState
from billing.domain.ledger import LedgerState
from billing.extensions import db
from billing.invoicing.rules import CollectionMethod, InvoiceStatus
from billing.notifications.kinds import KINDS
from billing.notifications.rules import DeliveryStatus
from billing.platform.ids import new_id
from billing.refunds.rules import RefundStatus
from billing.stripe_events.rules import EventStatus
from billing.subscriptions.rules import BILLABLE, SubscriptionStatus
from billing.taxes.rules import TaxCategory, TaxIdType, TaxReason, TaxStatus
from billing.webhooks.rules import DeliveryState

Timestamp = DateTime(timezone=True)


def _in(column: str, values: Iterable[str]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


# The states each table's CHECK constraint admits, in the order the migrations wrote them.
INVOICE_STATUSES = list(InvoiceStatus)
COLLECTION_METHODS = list(CollectionMethod)
LEDGER_STATES = list(LedgerState)
JOB_STATES = list(JobState)
CHARGE_STATUSES = list(ChargeStatus)
# An attempt in one of these may still move money: at most one per invoice at a time.
CHARGE_IN_FLIGHT = charge_rules.IN_FLIGHT
TAX_STATUSES = list(TaxStatus)
TAX_ID_TYPES = list(TaxIdType)
TAX_CATEGORIES = list(TaxCategory)
TAX_REASONS = list(TaxReason)


class Customer(db.Model):  # type: ignore[name-defined]
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "cus"))
    name: Mapped[str] = mapped_column(String(256))
    email: Mapped[str] = mapped_column(String(320))
    currency: Mapped[str] = mapped_column(String(3))
    address: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    tax_id: Mapped[str | None] = mapped_column(String(64))
    # What kind of number tax_id is (billing.taxes.rules.TaxIdType); it was checked, and
    # stored compact, when given. NULL for the free-text ids kept from before.
    tax_id_type: Mapped[str | None] = mapped_column(String(16))
    # business, individual or exempt: with the address's country, it decides the tax rules.
    tax_status: Mapped[str] = mapped_column(
        String(16), default=TaxStatus.BUSINESS.value, server_default=TaxStatus.BUSINESS.value
    )
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    default_payment_method: Mapped[str | None] = mapped_column(String(255))
    # CLDR locale for the customer's documents and emails: money, dates, wording.
    locale: Mapped[str] = mapped_column(String(35), default="en_US", server_default="en_US")
    # Further addresses that receive invoices and payment emails, besides `email`.
    billing_emails: Mapped[list[str]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    # Set when dunning gave up on one of its invoices; cleared once nothing is overdue.
    delinquent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Credit the customer holds, in its currency (billing.balances.rules): kept equal to the
    # balance after its newest balance transaction, in the same transaction.
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )

    invoices: Mapped[list[Invoice]] = relationship(back_populates="customer")

    __table_args__ = (
        CheckConstraint("currency = lower(currency)", name="currency_lowercase"),
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint(_in("tax_status", TAX_STATUSES), name="tax_status_known"),
        CheckConstraint(
            f"tax_id_type IS NULL OR {_in('tax_id_type', TAX_ID_TYPES)}",
            name="tax_id_type_known",
        ),
    )


class Invoice(db.Model):  # type: ignore[name-defined]
    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "in"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    status: Mapped[str] = mapped_column(
        String(16), default=InvoiceStatus.DRAFT.value, server_default=InvoiceStatus.DRAFT.value
    )
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    collection_method: Mapped[str] = mapped_column(String(32))
    days_until_due: Mapped[int | None] = mapped_column(Integer)
    due_date: Mapped[date | None] = mapped_column(Date)
    description: Mapped[str | None] = mapped_column(Text)
    # The buyer's reference (its purchase order number, a German public buyer's
    # Leitweg-ID): BT-10 of the e-invoice, which XRechnung requires.
    buyer_reference: Mapped[str | None] = mapped_column(String(200))
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    # The lines' amounts before discounts; `discount` the sum of the invoice's discounts;
    # `tax` computed on the discounted amounts.
    subtotal: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    discount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tax: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The customer's balance that paid part of it at finalization (never charged).
    balance_applied: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # What credit notes took off its amount due while it was open.
    amount_credited: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The totals of its credit notes that stand (not void), however they were settled.
    credit_notes_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )
    finalized_at: Mapped[datetime | None] = mapped_column(Timestamp)
    paid_at: Mapped[datetime | None] = mapped_column(Timestamp)
    voided_at: Mapped[datetime | None] = mapped_column(Timestamp)
    marked_uncollectible_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set when the customer's bank opened a dispute on the payment (charge.dispute.created).
    disputed_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # The day (service clock) the first automatic charge failed: dunning counts from it.
    dunning_started_on: Mapped[date | None] = mapped_column(Date)
    # Who issued the invoice and to whom, as they stood when it was finalized: an issued
    # invoice keeps its parties whatever the customer or the settings say later. Null on
    # drafts, and on invoices finalized before these were kept (they show current values).
    seller_party: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    buyer_party: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # What VIES said of the buyer's VAT id when a reverse-charged invoice was finalized
    # (billing.adapters.vies): the seller's proof that reverse charge applied.
    tax_evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    customer: Mapped[Customer] = relationship(back_populates="invoices")
    charge_attempts: Mapped[list[ChargeAttempt]] = relationship(
        back_populates="invoice", order_by="ChargeAttempt.id"
    )
    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice",
        order_by="InvoiceLine.id",
        cascade="all, delete-orphan",
    )

    __table_args__ = (
        CheckConstraint(_in("status", INVOICE_STATUSES), name="status_known"),
        CheckConstraint(_in("collection_method", COLLECTION_METHODS), name="collection_known"),
        # A finalized invoice always carries its number; a draft never does.
        CheckConstraint(
            f"(status = '{InvoiceStatus.DRAFT}') = (number IS NULL)", name="number_iff_finalized"
        ),
        CheckConstraint("total = subtotal - discount + tax", name="total_is_sum"),
        CheckConstraint("discount >= 0", name="discount_not_negative"),
        CheckConstraint(
            "amount_paid >= 0 AND balance_applied >= 0 AND amount_credited >= 0 "
            "AND amount_paid + balance_applied + amount_credited <= total",
            name="amount_paid_bounded",
        ),
        # However many credit notes, never more credited than the invoice's total.
        CheckConstraint(
            "credit_notes_total >= 0 AND credit_notes_total <= total", name="credit_notes_bounded"
        ),
        CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount_paid", name="refund_bounded"
        ),
        Index("ix_invoices_customer_status", "customer_id", "status"),
        # The nightly dunning run walks open invoices in id order.
        Index(
            "ix_invoices_open_by_id",
            "id",
            postgresql_where=text(f"status = '{InvoiceStatus.OPEN}'"),
        ),
    )

    @property
    def amount_due(self) -> int:
        # A model not yet flushed has no defaults yet: nothing applied or credited.
        settled = (
            (self.amount_paid or 0) + (self.balance_applied or 0) + (self.amount_credited or 0)
        )
        return (self.total or 0) - settled


# A tax-inclusive line takes no discount (billing.invoicing.rules), so its net and its tax
# add up to its gross.
AMOUNT_IS_PRODUCT = (
    "CASE WHEN tax_inclusive THEN amount + tax = quantity * unit_amount "
    "ELSE amount = quantity * unit_amount END"
)


class InvoiceLine(db.Model):  # type: ignore[name-defined]
    __tablename__ = "invoice_lines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "il"))
    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    description: Mapped[str] = mapped_column(String(500))
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    # The percentage it was taxed at, its own copy: the rate object may change or retire.
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(7, 4), default=Decimal(0))
    # The rate object the rules (or the caller) chose, if any, and why this percentage
    # (billing.taxes.rules.TaxReason). NULL on lines made before tax rules existed.
    tax_rate_id: Mapped[str | None] = mapped_column(ForeignKey("tax_rates.id"))
    tax_reason: Mapped[str | None] = mapped_column(String(24))
    # Its unit_amount holds its tax (a tax-inclusive rate): its amount is then the net
    # worked out of quantity * unit_amount, which its amount and tax add up to.
    tax_inclusive: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    amount: Mapped[int] = mapped_column(BigInteger)
    # Its share of the invoice's discounts: its tax is on amount - discount_amount.
    discount_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tax: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    invoice: Mapped[Invoice] = relationship(back_populates="lines")

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("tax_rate >= 0 AND tax_rate <= 100", name="tax_rate_percent"),
        CheckConstraint(
            f"tax_reason IS NULL OR {_in('tax_reason', TAX_REASONS)}", name="tax_reason_known"
        ),
        CheckConstraint(AMOUNT_IS_PRODUCT, name="amount_is_product"),
        CheckConstraint(
            "discount_amount >= 0 AND discount_amount <= greatest(amount, 0)",
            name="discount_bounded",
        ),
    )


class TaxRate(db.Model):  # type: ignore[name-defined]
    """A tax the seller charges: a percentage of a country (and region) for one category
    of products. Archived (active false), it is chosen no more, and stays on the lines that
    used it."""

    __tablename__ = "tax_rates"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "txr"))
    display_name: Mapped[str] = mapped_column(String(50))
    percentage: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    inclusive: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    country: Mapped[str] = mapped_column(String(2))
    region: Mapped[str | None] = mapped_column(String(100))
    tax_category: Mapped[str] = mapped_column(
        String(16), default=TaxCategory.STANDARD.value, server_default=TaxCategory.STANDARD.value
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        CheckConstraint("percentage >= 0 AND percentage <= 100", name="percentage_percent"),
        CheckConstraint("country ~ '^[A-Z]{2}$'", name="country_alpha2"),
        CheckConstraint(_in("tax_category", TAX_CATEGORIES), name="tax_category_known"),
        # The rules look rates up by country among the active ones.
        Index("ix_tax_rates_active_country", "country", postgresql_where=text("active")),
    )


class InvoiceNumberSequence(db.Model):  # type: ignore[name-defined]
    """One counter row per year; its row lock serializes finalizations, so numbers have no gaps."""

    __tablename__ = "invoice_number_sequences"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer)


class ApiKey(db.Model):  # type: ignore[name-defined]
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "key"))
    name: Mapped[str] = mapped_column(String(128))
    # NULL: an admin key; otherwise the one customer this key may see.
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    secret_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class LedgerEntry(db.Model):  # type: ignore[name-defined]
    """Every side effect that must happen at most once, keyed by (scope, key)."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    # The fencing token: raised by every takeover; writes name the attempt they belong to.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    locked_until: Mapped[datetime | None] = mapped_column(Timestamp)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp, index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        UniqueConstraint("scope", "key", name="uq_ledger_entries_scope_key"),
        CheckConstraint(_in("state", LEDGER_STATES), name="state_known"),
    )


class OutboxJob(db.Model):  # type: ignore[name-defined]
    """A follow-up job recorded in the same transaction as the change that caused it."""

    __tablename__ = "outbox_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "job"))
    name: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    state: Mapped[str] = mapped_column(
        String(16), default=JobState.PENDING.value, server_default=JobState.PENDING.value
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Past this instant an unfinished job is presumed lost (broker flushed, worker killed)
    # and the sweeper publishes it again; its handler is idempotent, so that is harmless.
    lease_expires_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # The worker running it (the id it beats under in Redis): a job whose worker stopped
    # beating is sent again at once rather than when its lease ends.
    worker: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        CheckConstraint(_in("state", JOB_STATES), name="state_known"),
        Index(
            "ix_outbox_jobs_unfinished",
            "lease_expires_at",
            postgresql_where=text(_in("state", UNFINISHED)),
        ),
        # Jobs that gave up are few among millions finished: operators list them and every
        # metrics scrape counts them, neither by scanning the whole table.
        Index(
            "ix_outbox_jobs_given_up",
            "finished_at",
            postgresql_where=text(_in("state", REPLAYABLE)),
        ),
    )


class ChargeAttempt(db.Model):  # type: ignore[name-defined]
    """One try at taking an invoice's amount due through one Stripe PaymentIntent."""

    __tablename__ = "charge_attempts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "ca"))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    # Our idempotency key toward Stripe, also written into the PaymentIntent's metadata.
    ledger_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(
        String(20), default=ChargeStatus.PENDING.value, server_default=ChargeStatus.PENDING.value
    )
    source: Mapped[str] = mapped_column(String(20))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    payment_method: Mapped[str | None] = mapped_column(String(255))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    decline_code: Mapped[str | None] = mapped_column(String(128))
    failure_message: Mapped[str | None] = mapped_column(Text)
    next_action: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    client_secret: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)

    invoice: Mapped[Invoice] = relationship(back_populates="charge_attempts")

    __table_args__ = (
        CheckConstraint(_in("status", CHARGE_STATUSES), name="status_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        # The last wall against a double charge: one succeeded payment per invoice...
        Index(
            "uq_charge_attempts_one_success_per_invoice",
            "invoice_id",
            unique=True,
            postgresql_where=text(f"status = '{ChargeStatus.SUCCEEDED}'"),
        ),
        # ...and never two attempts that may move money at the same time.
        Index(
            "uq_charge_attempts_one_in_flight_per_invoice",
            "invoice_id",
            unique=True,
            postgresql_where=text(_in("status", CHARGE_IN_FLIGHT)),
        ),
    )


REFUND_STATUSES = list(RefundStatus)


class Refund(db.Model):  # type: ignore[name-defined]
    """Money given back on an invoice's succeeded payment, through one Stripe Refund."""

    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "rf"))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    charge_attempt_id: Mapped[str] = mapped_column(ForeignKey("charge_attempts.id"))
    ledger_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(
        String(20), default=RefundStatus.PENDING.value, server_default=RefundStatus.PENDING.value
    )
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(500))
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The credit note this refund settles, if it settles one: at most one refund each.
    credit_note_id: Mapped[str | None] = mapped_column(ForeignKey("credit_notes.id"), unique=True)
    failure_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        CheckConstraint(_in("status", REFUND_STATUSES), name="status_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )


EVENT_STATUSES = list(EventStatus)


class StripeEvent(db.Model):  # type: ignore[name-defined]
    """A webhook event exactly as Stripe signed it; its id makes a redelivery a no-op."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(
        String(16), default=EventStatus.RECEIVED.value, server_default=EventStatus.RECEIVED.value
    )
    error: Mapped[str | None] = mapped_column(Text)
    # When Stripe created the event: how out-of-order deliveries are recognised.
    stripe_created_at: Mapped[datetime] = mapped_column(Timestamp)
    received_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    processed_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (CheckConstraint(_in("status", EVENT_STATUSES), name="status_known"),)


class InvoiceDocument(db.Model):  # type: ignore[name-defined]
    """One rendered PDF of an invoice. A change that shows on paper (paid, refunded, a new
    template) adds a version; earlier versions are kept, as sent to the customer."""

    __tablename__ = "invoice_documents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "doc"))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    invoice_status: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    storage: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(512))
    template_version: Mapped[str] = mapped_column(String(32))
    renderer_version: Mapped[str] = mapped_column(String(64))
    # What the document was rendered from: an equal fingerprint means nothing to re-render.
    source_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("invoice_id", "version", name="uq_invoice_documents_version"),
        # The same bytes are never stored twice for one invoice.
        UniqueConstraint("invoice_id", "sha256", name="uq_invoice_documents_sha256"),
        CheckConstraint("version > 0", name="version_positive"),
    )


class StoredBlob(db.Model):  # type: ignore[name-defined]
    """Document bytes kept in PostgreSQL: the default storage, with no other server."""

    __tablename__ = "stored_blobs"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(100))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


# From their declarations. The database's own CHECK constraints list them as migration 0005
# created them: a kind or status added here needs a migration that replaces the constraint.
EMAIL_KINDS = list(KINDS)
EMAIL_STATUSES = list(DeliveryStatus)


class EmailDelivery(db.Model):  # type: ignore[name-defined]
    """One email to one recipient about one event of an invoice; sent at most once.

    `occasion` tells events of one kind apart (the charge attempt that failed, the refund,
    the dunning step); the unique ledger key over (kind, invoice, occasion, recipient) is
    what makes a doubled event or a redelivered task harmless."""

    __tablename__ = "email_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "em"))
    kind: Mapped[str] = mapped_column(String(40))
    # The invoice it is about; None for an email about a subscription alone (its trial).
    invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    subscription_id: Mapped[str | None] = mapped_column(ForeignKey("subscriptions.id"))
    occasion: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(320))
    ledger_key: Mapped[str] = mapped_column(String(255), unique=True)
    context: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    status: Mapped[str] = mapped_column(
        String(16),
        default=DeliveryStatus.PENDING.value,
        server_default=DeliveryStatus.PENDING.value,
    )
    message_id: Mapped[str] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)

    invoice: Mapped[Invoice | None] = relationship()

    __table_args__ = (
        CheckConstraint(_in("kind", EMAIL_KINDS), name="kind_known"),
        CheckConstraint(_in("status", EMAIL_STATUSES), name="status_known"),
        CheckConstraint(
            "invoice_id IS NOT NULL OR subscription_id IS NOT NULL", name="about_something"
        ),
    )


PRICE_INTERVALS = ["month", "year"]
SUBSCRIPTION_STATUSES = list(SubscriptionStatus)


class Price(db.Model):  # type: ignore[name-defined]
    """What one unit of a product costs per interval, billed in advance."""

    __tablename__ = "prices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "prc"))
    product: Mapped[str] = mapped_column(String(256))
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str] = mapped_column(String(8))
    # Which of a country's rates its lines take (billing.taxes.rules.TaxCategory).
    tax_category: Mapped[str] = mapped_column(
        String(16), default=TaxCategory.STANDARD.value, server_default=TaxCategory.STANDARD.value
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        CheckConstraint("unit_amount >= 0", name="unit_amount_not_negative"),
        CheckConstraint(_in("tax_category", TAX_CATEGORIES), name="tax_category_known"),
        CheckConstraint(_in("interval", PRICE_INTERVALS), name="interval_known"),
        CheckConstraint("currency = lower(currency)", name="currency_lowercase"),
    )


class Subscription(db.Model):  # type: ignore[name-defined]
    """A customer's standing order for a price: one invoice per period, in advance.

    Period `current_period_index` runs from current_period_start to current_period_end
    and has been invoiced; the billing run invoices the next one once the current ends."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "sub"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    price_id: Mapped[str] = mapped_column(ForeignKey("prices.id"))
    quantity: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(
        String(16),
        default=SubscriptionStatus.ACTIVE.value,
        server_default=SubscriptionStatus.ACTIVE.value,
    )
    collection_method: Mapped[str] = mapped_column(String(32))
    days_until_due: Mapped[int | None] = mapped_column(Integer)
    # Periods are computed from the anchor, never from the previous period, so that an
    # anchor on the 31st comes back to the 31st after a short month.
    billing_cycle_anchor: Mapped[datetime] = mapped_column(Timestamp)
    current_period_index: Mapped[int] = mapped_column(Integer)
    current_period_start: Mapped[datetime] = mapped_column(Timestamp)
    current_period_end: Mapped[datetime] = mapped_column(Timestamp)
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False, server_default="false")
    canceled_at: Mapped[datetime | None] = mapped_column(Timestamp)
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)
    latest_invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    # A trial runs from trial_start to trial_end (the billing cycle anchor: the first paid
    # period starts there); during it the current period is the trial, of index -1.
    trial_start: Mapped[datetime | None] = mapped_column(Timestamp)
    trial_end: Mapped[datetime | None] = mapped_column(Timestamp)
    # Set with the trial_will_end event and email, in their transaction: sent once.
    trial_will_end_notified_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )

    price: Mapped[Price] = relationship()
    customer: Mapped[Customer] = relationship()
    # Adjustments not yet on an invoice: loaded with the subscription's row lock by the
    # billing run, in the same statement.
    pending_adjustments: Mapped[list[SubscriptionAdjustment]] = relationship(
        primaryjoin="and_(SubscriptionAdjustment.subscription_id == Subscription.id, "
        "SubscriptionAdjustment.invoice_id.is_(None))",
        order_by="SubscriptionAdjustment.id",
        viewonly=True,
    )

    __table_args__ = (
        CheckConstraint(_in("status", SUBSCRIPTION_STATUSES), name="status_known"),
        CheckConstraint(_in("collection_method", COLLECTION_METHODS), name="collection_known"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("current_period_end > current_period_start", name="period_ordered"),
        CheckConstraint(
            "trial_end IS NULL OR (trial_start IS NOT NULL AND trial_end > trial_start)",
            name="trial_ordered",
        ),
        # What the billing run scans: active and trialing subscriptions by the end of their
        # period (a trial's end is its current period's end).
        Index(
            "ix_subscriptions_billable_period_end",
            "current_period_end",
            postgresql_where=text(_in("status", list(BILLABLE))),
        ),
        # What the trial_will_end notice scans: trials not yet told, by their end.
        Index(
            "ix_subscriptions_trial_end_unnotified",
            "trial_end",
            postgresql_where=text(
                f"status = '{SubscriptionStatus.TRIALING}' AND trial_will_end_notified_at IS NULL"
            ),
        ),
    )


class SubscriptionPeriod(db.Model):  # type: ignore[name-defined]
    """One invoiced period of a subscription. Its key makes a second invoice for the same
    period impossible, whatever runs concurrently or twice."""

    __tablename__ = "subscription_periods"

    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    period_end: Mapped[datetime] = mapped_column(Timestamp)
    period_index: Mapped[int] = mapped_column(Integer)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("subscription_id", "period_index", name="uq_subscription_periods_index"),
        UniqueConstraint("invoice_id", name="uq_subscription_periods_invoice"),
    )


class SubscriptionAdjustment(db.Model):  # type: ignore[name-defined]
    """A prorated credit (negative) or charge waiting for the subscription's next invoice,
    which turns it into a line and records itself here as `invoice_id`."""

    __tablename__ = "subscription_adjustments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "adj"))
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id"))
    description: Mapped[str] = mapped_column(String(500))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # A credit carried from an invoice it would have taken below zero: its amount holds
    # that invoice's tax already, so its line takes no more.
    tax_included: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        Index(
            "ix_subscription_adjustments_pending",
            "subscription_id",
            postgresql_where=text("invoice_id IS NULL"),
        ),
    )


DUNNING_STEP_STATUSES = ["done", "skipped"]


class DunningStepRecord(db.Model):  # type: ignore[name-defined]
    """A dunning step the nightly job took (performed or skipped), recorded in the same
    transaction as its effect and its ledger entry: what the preview shows as past."""

    __tablename__ = "dunning_steps"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"))
    step: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    # The service clock's day when it was taken (the scheduled day may be earlier).
    taken_on: Mapped[date] = mapped_column(Date)
    charge_attempt_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("invoice_id", "step", name="uq_dunning_steps_invoice_step"),
        CheckConstraint(_in("status", DUNNING_STEP_STATUSES), name="status_known"),
    )


class Event(db.Model):  # type: ignore[name-defined]
    """A change the company's app cares about, recorded in the transaction of the change,
    with the object as the API showed it then (billing.events.rules)."""

    __tablename__ = "events"
    # No CHECK on `type`: every event is recorded through billing.events.rules.EventType,
    # and a new type (the next issue's credit notes) must not need a migration.

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "evt"))
    sequence: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(40))
    # Whose it is: a customer key sees its own customer's events only.
    customer_id: Mapped[str | None] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # Handed to the webhook endpoints that existed when it was dispatched.
    dispatched: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        Index("ix_events_object", "object_id", "sequence"),
        Index("ix_events_customer", "customer_id", "id"),
        Index("ix_events_type", "type", "id"),
        Index("ix_events_created_at", "created_at"),
        # The dispatcher's queue: small, however long the log.
        Index("ix_events_undispatched", "sequence", postgresql_where=text("NOT dispatched")),
    )


class WebhookEndpoint(db.Model):  # type: ignore[name-defined]
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "we"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(500))
    # Event types it receives; ["*"] for every type.
    event_types: Mapped[list[str]] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # Why it was disabled by the service (410, days of failures); None when by its owner.
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # The first failed try since its last delivered one: how long it has been failing.
    failing_since: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )
    # Deleted endpoints stay, with their deliveries, for the record; none is sent to them.
    deleted_at: Mapped[datetime | None] = mapped_column(Timestamp)

    secrets: Mapped[list[WebhookSecret]] = relationship(
        back_populates="endpoint", order_by="WebhookSecret.created_at"
    )


class WebhookSecret(db.Model):  # type: ignore[name-defined]
    """A signing secret of an endpoint. Every secret not yet expired signs each delivery:
    after a roll, the old one keeps signing until its overlap ends."""

    __tablename__ = "webhook_secrets"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)

    endpoint: Mapped[WebhookEndpoint] = relationship(back_populates="secrets")


WEBHOOK_DELIVERY_STATES = list(DeliveryState)


class WebhookDelivery(db.Model):  # type: ignore[name-defined]
    """One event for one endpoint, sent at least once (billing.webhooks.rules)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "whd"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    # The event's object and sequence, here so that the order check reads one index.
    object_id: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp)
    first_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        CheckConstraint(_in("state", WEBHOOK_DELIVERY_STATES), name="state_known"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),
        # The order check and the release of the next waiting delivery of an object.
        Index(
            "ix_webhook_deliveries_unfinished",
            "endpoint_id",
            "object_id",
            "sequence",
            postgresql_where=text("state IN ('waiting', 'pending')"),
        ),
    )


class WebhookAttempt(db.Model):  # type: ignore[name-defined]
    """One POST of a delivery, as it went: what an operator reads when a receiver complains."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    outcome: Mapped[str] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())


CREDIT_NOTE_STATUSES = list(CreditNoteStatus)
CREDIT_NOTE_REASONS = list(CreditNoteReason)


class CreditNoteNumberSequence(db.Model):  # type: ignore[name-defined]
    """The credit notes' own gapless series, one counter row per year, as for invoices."""

    __tablename__ = "credit_note_number_sequences"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer)


class CreditNote(db.Model):  # type: ignore[name-defined]
    """A correction of a finalized invoice, and how its total was settled
    (billing.credit_notes.rules)."""

    __tablename__ = "credit_notes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "cn"))
    number: Mapped[str] = mapped_column(String(32), unique=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    memo: Mapped[str | None] = mapped_column(Text)
    subtotal: Mapped[int] = mapped_column(BigInteger)
    tax: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    # How the total was settled: the parts sum to it.
    amount_due_reduction: Mapped[int] = mapped_column(BigInteger, server_default="0")
    refund_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    credit_balance_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    out_of_band_amount: Mapped[int] = mapped_column(BigInteger, server_default="0")
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    issued_at: Mapped[datetime] = mapped_column(Timestamp)
    voided_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        Timestamp, server_default=func.now(), onupdate=func.now()
    )

    lines: Mapped[list[CreditNoteLine]] = relationship(
        back_populates="credit_note", order_by="CreditNoteLine.id", cascade="all, delete-orphan"
    )
    refund: Mapped[Refund | None] = relationship(
        primaryjoin="Refund.credit_note_id == CreditNote.id", viewonly=True, uselist=False
    )

    __table_args__ = (
        CheckConstraint(_in("status", CREDIT_NOTE_STATUSES), name="status_known"),
        CheckConstraint(_in("reason", CREDIT_NOTE_REASONS), name="reason_known"),
        CheckConstraint("total = subtotal + tax AND total > 0", name="total_is_sum"),
        CheckConstraint(
            "amount_due_reduction >= 0 AND refund_amount >= 0 AND credit_balance_amount >= 0 "
            "AND out_of_band_amount >= 0 AND amount_due_reduction + refund_amount "
            "+ credit_balance_amount + out_of_band_amount = total",
            name="settlement_is_total",
        ),
        CheckConstraint(
            f"(status = '{CreditNoteStatus.VOID}') = (voided_at IS NOT NULL)", name="void_dated"
        ),
        Index("ix_credit_notes_customer", "customer_id", "id"),
    )


class CreditNoteLine(db.Model):  # type: ignore[name-defined]
    __tablename__ = "credit_note_lines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "cnl"))
    credit_note_id: Mapped[str] = mapped_column(
        ForeignKey("credit_notes.id", ondelete="CASCADE"), index=True
    )
    # The invoice line it credits; None for a free amount.
    invoice_line_id: Mapped[str | None] = mapped_column(ForeignKey("invoice_lines.id"))
    description: Mapped[str] = mapped_column(String(500))
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(7, 4))
    # Net of tax.
    amount: Mapped[int] = mapped_column(BigInteger)
    tax: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    credit_note: Mapped[CreditNote] = relationship(back_populates="lines")

    __table_args__ = (
        CheckConstraint("amount >= 0 AND tax >= 0", name="amounts_not_negative"),
        CheckConstraint("quantity IS NULL OR quantity > 0", name="quantity_positive"),
    )


class CreditNoteDocument(db.Model):  # type: ignore[name-defined]
    """One rendered PDF of a credit note, versioned and hashed as InvoiceDocument is."""

    __tablename__ = "credit_note_documents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "doc"))
    credit_note_id: Mapped[str] = mapped_column(ForeignKey("credit_notes.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    credit_note_status: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    storage: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(512))
    template_version: Mapped[str] = mapped_column(String(32))
    renderer_version: Mapped[str] = mapped_column(String(64))
    source_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("credit_note_id", "version", name="uq_credit_note_documents_version"),
        UniqueConstraint("credit_note_id", "sha256", name="uq_credit_note_documents_sha256"),
        CheckConstraint("version > 0", name="version_positive"),
    )


BALANCE_TRANSACTION_TYPES = list(BalanceTransactionType)


class CustomerBalanceTransaction(db.Model):  # type: ignore[name-defined]
    """One change of a customer's balance; append-only (billing.balances.rules)."""

    __tablename__ = "customer_balance_transactions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "cbt"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    type: Mapped[str] = mapped_column(String(32))
    # Positive: credit added; negative: credit used or taken back.
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    balance_after: Mapped[int] = mapped_column(BigInteger)
    credit_note_id: Mapped[str | None] = mapped_column(ForeignKey("credit_notes.id"))
    invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    description: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        CheckConstraint(_in("type", BALANCE_TRANSACTION_TYPES), name="type_known"),
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        Index("ix_customer_balance_transactions_customer", "customer_id", "id"),
        # What makes applying a balance (or giving it back) happen once per invoice and
        # once per credit note, whatever retries and races.
        Index(
            "uq_customer_balance_transactions_invoice",
            "invoice_id",
            "type",
            unique=True,
            postgresql_where=text("invoice_id IS NOT NULL"),
        ),
        Index(
            "uq_customer_balance_transactions_credit_note",
            "credit_note_id",
            "type",
            unique=True,
            postgresql_where=text("credit_note_id IS NOT NULL"),
        ),
    )


COUPON_DURATIONS = list(CouponDuration)


class Coupon(db.Model):  # type: ignore[name-defined]
    """A reduction: a percentage or an amount in one currency, for a duration."""

    __tablename__ = "coupons"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "co"))
    name: Mapped[str] = mapped_column(String(256))
    percent_off: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    amount_off: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    duration: Mapped[str] = mapped_column(String(16))
    duration_in_months: Mapped[int | None] = mapped_column(Integer)
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    # The last instant it can be redeemed.
    redeem_by: Mapped[datetime | None] = mapped_column(Timestamp)
    times_redeemed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    metadata_: Mapped[dict[str, str]] = mapped_column(
        "metadata", JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())
    # A deleted coupon can no longer be redeemed; the discounts it gave run their course.
    deleted_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        CheckConstraint("(percent_off IS NULL) <> (amount_off IS NULL)", name="one_kind"),
        CheckConstraint("percent_off > 0 AND percent_off <= 100", name="percent_off_bounded"),
        CheckConstraint("amount_off > 0", name="amount_off_positive"),
        CheckConstraint("(amount_off IS NULL) = (currency IS NULL)", name="currency_iff_amount"),
        CheckConstraint(_in("duration", COUPON_DURATIONS), name="duration_known"),
        CheckConstraint(
            f"(duration = '{CouponDuration.REPEATING}') = (duration_in_months IS NOT NULL) "
            "AND (duration_in_months IS NULL OR duration_in_months > 0)",
            name="months_iff_repeating",
        ),
        CheckConstraint(
            "times_redeemed >= 0 "
            "AND (max_redemptions IS NULL OR times_redeemed <= max_redemptions)",
            name="redemptions_bounded",
        ),
    )


class PromotionCode(db.Model):  # type: ignore[name-defined]
    """A code customers type, mapping to a coupon, with limits of its own."""

    __tablename__ = "promotion_codes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "promo"))
    code: Mapped[str] = mapped_column(String(64))
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # Only this customer may redeem it, when set.
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"))
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    times_redeemed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        # Codes are typed by people: one code whatever its case.
        Index("uq_promotion_codes_code", func.lower(text("code")), unique=True),
        CheckConstraint(
            "times_redeemed >= 0 "
            "AND (max_redemptions IS NULL OR times_redeemed <= max_redemptions)",
            name="redemptions_bounded",
        ),
    )


class Discount(db.Model):  # type: ignore[name-defined]
    """A coupon applied to a customer, to one of its subscriptions, or to one invoice."""

    __tablename__ = "discounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=partial(new_id, "di"))
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    promotion_code_id: Mapped[str | None] = mapped_column(ForeignKey("promotion_codes.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    subscription_id: Mapped[str | None] = mapped_column(ForeignKey("subscriptions.id"))
    invoice_id: Mapped[str | None] = mapped_column(ForeignKey("invoices.id"))
    start: Mapped[datetime] = mapped_column(Timestamp)
    # The end of a repeating discount (start + its months); None for once and forever.
    end: Mapped[datetime | None] = mapped_column(Timestamp)
    # When it stopped applying early: removed, or a `once` discount used by its invoice.
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "subscription_id IS NULL OR invoice_id IS NULL", name="one_subscription_or_invoice"
        ),
        Index("ix_discounts_customer", "customer_id"),
        Index("ix_discounts_subscription", "subscription_id"),
        Index("ix_discounts_invoice", "invoice_id"),
    )


class InvoiceDiscount(db.Model):  # type: ignore[name-defined]
    """A discount line of an invoice: what one discount took off it."""

    __tablename__ = "invoice_discounts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    discount_id: Mapped[str] = mapped_column(ForeignKey("discounts.id"))
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    description: Mapped[str] = mapped_column(String(500))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now())

    __table_args__ = (
        UniqueConstraint("invoice_id", "discount_id", name="uq_invoice_discounts_discount"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )
