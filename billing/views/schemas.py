"""Request and response schemas: the same models validate requests and make /openapi.json."""

from __future__ import annotations

import unicodedata
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from billing.balances.rules import BalanceTransactionType
from billing.credit_notes.rules import CreditNoteReason, CreditNoteStatus
from billing.domain.money import (
    UnknownCurrency,
    UnsupportedCurrency,
    known_currencies,
    normalize_currency,
)
from billing.events.rules import EventType
from billing.invoicing.rules import (
    MAX_LINES_PER_INVOICE,
    MAX_TAX_RATE,
    TAX_RATE_QUANTUM,
    CollectionMethod,
    InvoiceStatus,
)
from billing.subscriptions.rules import MAX_TRIAL_DAYS, Interval, SubscriptionStatus
from billing.taxes.rules import TaxCategory, TaxIdType, TaxReason, TaxStatus


class Strict(BaseModel):
    """Unknown fields are refused, and numbers are not parsed out of strings."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)


# Text that reaches an invoice or an email must read as it is: control characters (CR/LF
# would forge an email header), format characters (U+202E turns what follows around, zero
# widths hide a difference), line and paragraph separators, and lone surrogates.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _refuse_hidden_characters(value: str, allowed: str = "") -> str:
    if value.isprintable():  # no character of those categories; the common case
        return value
    for character in value:
        if unicodedata.category(character) in _HIDDEN_CATEGORIES and character not in allowed:
            name = unicodedata.name(character, unicodedata.category(character))
            raise PydanticCustomError(
                "invalid_characters",
                "must not contain {character}: control, invisible formatting and line "
                "separator characters are refused",
                {"character": f"U+{ord(character):04X} ({name})"},
            )
    return value


def _plain_text(value: str) -> str:
    return _refuse_hidden_characters(value)


def _memo_text(value: str) -> str:
    # A memo may run over several lines; the other characters are refused as in a name.
    return _refuse_hidden_characters(value, allowed="\n\r\t")


def _currency(value: str) -> str:
    try:
        return normalize_currency(value)
    except UnsupportedCurrency as exc:
        # Its own code: a real currency, which Stripe cannot charge (billing.domain.money).
        raise PydanticCustomError(
            "currency_not_supported",
            "'{code}' is an ISO 4217 currency Stripe cannot charge; see "
            "https://docs.stripe.com/currencies",
            {"code": value},
        ) from exc
    except UnknownCurrency as exc:
        raise ValueError(f"'{value}' is not a known ISO 4217 currency code") from exc


def _tax_rate(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError('must be a number of percent, such as 19 or "7.7"')
    try:
        rate = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError('must be a number of percent, such as 19 or "7.7"') from exc
    if not rate.is_finite() or rate < 0 or rate > MAX_TAX_RATE:
        raise ValueError("must be between 0 and 100 percent")
    if rate != rate.quantize(TAX_RATE_QUANTUM):
        raise ValueError("has at most four decimal places")
    return rate.quantize(TAX_RATE_QUANTUM)


def _country(value: str) -> str:
    from babel import Locale

    # CLDR's territories: the ISO 3166 alpha-2 codes (and a few regions of digits, or
    # codes such as EU and ZZ that no tax authority is).
    code = value.upper()
    if (
        code not in Locale("en").territories
        or not code.isalpha()
        or code in {"EU", "EZ", "UN", "ZZ", "QO"}
    ):
        raise PydanticCustomError(
            "country_unknown", "'{code}' is not an ISO 3166 alpha-2 country code", {"code": value}
        )
    return code


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text or JSONB; other line breaks are fine here.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# One line of text shown on a document or in an email (a name, an address line...).
Text = Annotated[str, AfterValidator(_plain_text)]
# Text kept but never shown on a document or in an email (metadata values).
LongText = Annotated[str, AfterValidator(_no_nul)]
# Free text of several lines shown on the invoice (its description, or memo).
Memo = Annotated[str, AfterValidator(_memo_text)]
Name = Annotated[Text, StringConstraints(min_length=1, max_length=256)]
Email = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=320, pattern=r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$"
    ),
    # Before the pattern, which would refuse a line break with a vaguer code.
    BeforeValidator(lambda value: _plain_text(value) if isinstance(value, str) else value),
]
Currency = Annotated[
    str,
    StringConstraints(min_length=3, max_length=3),
    AfterValidator(_currency),
    # Lower-case ISO 4217 codes of the currencies Stripe can charge, as Stripe spells them;
    # upper case is accepted too.
    WithJsonSchema({"type": "string", "enum": sorted(known_currencies()), "example": "eur"}),
]


def tax_rate_text(rate: Decimal) -> str:
    """Percent as a plain decimal string: "19", "7.7", never "7.7000" or "1.9E+1"."""
    return format(rate.normalize(), "f")


TaxRate = Annotated[
    Decimal,
    BeforeValidator(_tax_rate),
    PlainSerializer(tax_rate_text, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\d{1,3}(\.\d{1,4})?$"}],
            "description": "Percent, 0 to 100, at most four decimals.",
        }
    ),
]
Metadata = Annotated[
    dict[
        Annotated[Text, StringConstraints(min_length=1, max_length=40)],
        Annotated[LongText, StringConstraints(max_length=500)],
    ],
    Field(max_length=50),
]
ObjectId = Annotated[
    str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z]+_[0-9a-z]+$")
]
Amount = Annotated[int, Field(ge=0, le=99_999_999_999)]


def _locale(value: str) -> str:
    from babel import Locale, UnknownLocaleError

    try:
        return str(Locale.parse(value.replace("-", "_")))
    except (ValueError, UnknownLocaleError) as exc:
        raise ValueError(f"'{value}' is not a known locale, such as en_US or de_DE") from exc


Locale = Annotated[
    str,
    StringConstraints(
        min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$"
    ),
    AfterValidator(_locale),
    Field(description="Language and region for documents and emails (CLDR), e.g. de_DE."),
]
BillingEmails = Annotated[
    list[Email],
    Field(max_length=10, description="More addresses that receive invoices and receipts."),
]
Quantity = Annotated[int, Field(ge=1, le=1_000_000)]


class Address(Strict):
    line1: Annotated[Text, StringConstraints(max_length=200)] | None = None
    line2: Annotated[Text, StringConstraints(max_length=200)] | None = None
    city: Annotated[Text, StringConstraints(max_length=100)] | None = None
    state: Annotated[Text, StringConstraints(max_length=100)] | None = None
    postal_code: Annotated[Text, StringConstraints(max_length=20)] | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None


class CustomerCreate(Strict):
    name: Name
    email: Email
    currency: Currency
    address: Address | None = None
    tax_id: Annotated[Text, StringConstraints(max_length=64)] | None = None
    tax_id_type: TaxIdType | None = Field(
        default=None, description="Checked for format and check digits; stored compact."
    )
    tax_status: TaxStatus = TaxStatus.BUSINESS
    metadata: Metadata = Field(default_factory=dict)
    locale: Locale = "en_US"
    billing_emails: BillingEmails = Field(default_factory=list)


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    # "Absent" is the default of a PATCH field; null is not a value the schema allows.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None:
            del prop["default"]


class CustomerUpdate(Strict):
    """Only the fields sent change. name, email, currency and metadata cannot be null;
    address and tax_id can (null clears them)."""

    model_config = ConfigDict(json_schema_extra=_drop_null_defaults)

    # A default of None that the type refuses: absent means "unchanged", null is invalid.
    name: Name = None  # type: ignore[assignment]
    email: Email = None  # type: ignore[assignment]
    currency: Currency = None  # type: ignore[assignment]
    address: Address | None = None
    tax_id: Annotated[Text, StringConstraints(max_length=64)] | None = None
    tax_id_type: TaxIdType | None = None
    tax_status: TaxStatus = None  # type: ignore[assignment]
    metadata: Metadata = None  # type: ignore[assignment]
    locale: Locale = None  # type: ignore[assignment]
    billing_emails: BillingEmails = None  # type: ignore[assignment]


class PaymentMethodAttach(Strict):
    payment_method: Annotated[str, StringConstraints(pattern=r"^pm_[A-Za-z0-9_]{1,250}$")]


class LineCreate(Strict):
    """Its tax: a percentage of the caller's own (`tax_rate`) or a tax rate object
    (`tax_rate_id`), both `manual`; or, with neither, the tax rules' for the customer and
    `tax_category`."""

    description: Annotated[Text, StringConstraints(min_length=1, max_length=500)]
    quantity: Quantity = 1
    unit_amount: Amount
    tax_rate: TaxRate | None = None
    tax_rate_id: ObjectId | None = None
    tax_category: TaxCategory = TaxCategory.STANDARD

    @model_validator(mode="after")
    def _one_tax(self) -> LineCreate:
        if self.tax_rate is not None and self.tax_rate_id is not None:
            raise ValueError("give tax_rate or tax_rate_id, not both")
        return self


def _line_count(value: Any) -> Any:
    # Counted before each line is validated, and with its own code, as adding lines is.
    if isinstance(value, list) and len(value) > MAX_LINES_PER_INVOICE:
        raise PydanticCustomError(
            "too_many_lines",
            "an invoice holds at most {limit} lines",
            {"limit": MAX_LINES_PER_INVOICE},
        )
    return value


Lines = Annotated[
    list[LineCreate], BeforeValidator(_line_count), Field(max_length=MAX_LINES_PER_INVOICE)
]


# --- coupons, promotion codes and discounts (requests) --------------------------------------


def _percent_off(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError('must be a number of percent, such as 20 or "12.5"')
    try:
        percent = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError('must be a number of percent, such as 20 or "12.5"') from exc
    if not percent.is_finite() or percent <= 0 or percent > 100:
        raise ValueError("must be above 0 and at most 100 percent")
    if percent != percent.quantize(TAX_RATE_QUANTUM):
        raise ValueError("has at most four decimal places")
    return percent.quantize(TAX_RATE_QUANTUM)


PercentOff = Annotated[
    Decimal,
    BeforeValidator(_percent_off),
    PlainSerializer(tax_rate_text, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\d{1,3}(\.\d{1,4})?$"}],
            "description": "Percent, above 0 and at most 100, at most four decimals.",
        }
    ),
]
# Up to the last second of 9999: further than any date Python can hold is refused, not a 500.
Timestamp = Annotated[int, Field(ge=0, le=253_402_300_799, description="Unix seconds.")]
PromotionCodeText = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
]


class DiscountCreate(Strict):
    """A coupon, or a promotion code (by its id): exactly one."""

    coupon: ObjectId | None = None
    promotion_code: ObjectId | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DiscountCreate:
        if (self.coupon is None) == (self.promotion_code is None):
            raise ValueError("give a coupon or a promotion_code, exactly one")
        return self


class InvoiceCreate(Strict):
    customer: ObjectId
    collection_method: CollectionMethod = CollectionMethod.CHARGE_AUTOMATICALLY
    currency: Currency | None = None
    days_until_due: Annotated[int, Field(ge=0, le=365)] | None = None
    due_date: date | None = Field(default=None, json_schema_extra={"format": "date"})
    description: Annotated[Memo, StringConstraints(max_length=5000)] | None = None
    buyer_reference: Annotated[Text, StringConstraints(min_length=1, max_length=200)] | None = (
        Field(
            default=None,
            description="The buyer's reference or purchase order number, BT-10 of the "
            "e-invoice (XRechnung, for a buyer in Germany, requires it).",
        )
    )
    metadata: Metadata = Field(default_factory=dict)
    lines: Lines = Field(default_factory=list)
    discounts: list[DiscountCreate] = Field(
        default_factory=list,
        max_length=20,
        description="Its own discounts; the customer's apply as well.",
    )


class ListQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False)
    limit: Annotated[int, Field(ge=1, le=100)] = 10
    starting_after: ObjectId | None = None


class CustomerListQuery(ListQuery):
    pass


class EInvoiceQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False)
    syntax: Literal["cii", "ubl"] = Field(
        default="cii",
        description="cii: UN/CEFACT CII, the Factur-X EN 16931 profile; ubl: OASIS UBL 2.1 "
        "(XRechnung 3.0 for a buyer in Germany).",
    )


class InvoiceListQuery(ListQuery):
    customer: ObjectId | None = None
    status: InvoiceStatus | None = None


# Responses ---------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class CustomerOut(BaseModel):
    id: str
    object: Literal["customer"] = "customer"
    name: str
    email: str
    currency: str
    address: Address | None
    tax_id: str | None
    tax_id_type: TaxIdType | None
    tax_status: TaxStatus
    metadata: dict[str, str]
    locale: str
    billing_emails: list[str]
    stripe_customer_id: str | None
    default_payment_method: str | None
    balance: int = Field(
        description="Credit the customer holds, used by its next invoices before any charge."
    )
    delinquent: bool = Field(
        description="Dunning gave up on one of its invoices, and it is not paid yet."
    )
    created: int
    sync_job: str | None = Field(default=None, description="The job creating it on Stripe.")


class CustomerList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CustomerOut]
    has_more: bool


class LineOut(BaseModel):
    id: str
    object: Literal["line_item"] = "line_item"
    description: str
    quantity: int
    unit_amount: int = Field(
        description="Per unit, minor units; tax included when tax_inclusive is true."
    )
    tax_rate: TaxRate
    amount: int = Field(
        description="Its net amount before discounts: quantity * unit_amount, or for a "
        "tax-inclusive line that gross less its tax."
    )
    discount_amount: int = Field(description="Its share of the invoice's discounts.")
    tax: int = Field(
        description="Its share of its rate's tax, which is rounded once on the rate's "
        "taxable total (amount - discount_amount of its lines)."
    )
    tax_rate_id: str | None = Field(description="The tax rate object it used, if any.")
    tax_reason: TaxReason | None = Field(
        description="Why this rate: standard, reverse_charge, zero_rated_export, exempt or "
        "manual; null on lines made before tax rules."
    )
    tax_inclusive: bool = Field(
        description="Its unit_amount includes its tax (a tax-inclusive rate): amount + tax "
        "= quantity * unit_amount."
    )


class LineList(BaseModel):
    object: Literal["list"] = "list"
    data: list[LineOut]


class TaxAmount(BaseModel):
    tax_rate: TaxRate
    taxable_amount: int
    amount: int


class ChargeAttemptOut(BaseModel):
    id: str
    object: Literal["charge_attempt"] = "charge_attempt"
    invoice: str
    status: Literal[
        "pending", "started", "unknown", "requires_action", "succeeded", "failed", "canceled"
    ]
    source: str
    amount: int
    currency: str
    payment_method: str | None
    payment_intent: str | None
    decline_code: str | None
    failure_message: str | None
    next_action: dict[str, Any] | None = Field(
        description="What the customer must do to finish a payment that requires action."
    )
    client_secret: str | None = Field(
        description="For Stripe.js to complete authentication; only on requires_action."
    )
    created: int
    finished_at: int | None


class PayResponse(ChargeAttemptOut):
    job: str | None = Field(description="The recorded job that runs (or ran) this attempt.")
    created_now: bool = Field(description="False when an attempt was already in flight.")


class RefundCreate(Strict):
    amount: Annotated[int, Field(ge=1, le=99_999_999_999)] | None = Field(
        default=None, description="Minor units; everything still refundable when omitted."
    )
    reason: Annotated[Text, StringConstraints(max_length=500)] | None = None


class RefundOut(BaseModel):
    id: str
    object: Literal["refund"] = "refund"
    invoice: str
    status: Literal["pending", "started", "unknown", "succeeded", "failed"]
    amount: int
    currency: str
    reason: str | None
    stripe_refund_id: str | None
    failure_message: str | None
    created: int
    job: str | None = None


class EmailOut(BaseModel):
    id: str
    object: Literal["email"] = "email"
    kind: str
    recipient: str
    status: Literal["pending", "sent", "failed"]
    error: str | None = Field(description="Why the last try failed, as the mail server said.")
    attempts: int
    message_id: str
    created: int
    sent_at: int | None


class DocumentOut(BaseModel):
    object: Literal["invoice_document"] = "invoice_document"
    version: int
    invoice_status: str = Field(description="The invoice's status the document shows.")
    sha256: str
    size: int
    template_version: str
    renderer_version: str
    created: int
    url: str


class PdfPending(BaseModel):
    object: Literal["pdf_pending"] = "pdf_pending"
    invoice: str
    render_pending: bool = Field(description="A render job is queued or running.")
    message: str


class CreditNotePdfPending(BaseModel):
    object: Literal["pdf_pending"] = "pdf_pending"
    credit_note: str
    render_pending: bool = Field(description="A render job is queued or running.")
    message: str


class InvoiceDiscountOut(BaseModel):
    id: str = Field(description="The discount.")
    coupon: str
    description: str
    amount: int


class InvoiceOut(BaseModel):
    id: str
    object: Literal["invoice"] = "invoice"
    customer: str
    number: str | None
    status: InvoiceStatus
    currency: str
    collection_method: CollectionMethod
    days_until_due: int | None
    due_date: date | None
    description: str | None
    buyer_reference: str | None = None
    metadata: dict[str, str]
    lines: LineList
    subtotal: int = Field(description="The lines' amounts, before discounts.")
    discount: int = Field(description="What the invoice's discounts took off the subtotal.")
    discounts: list[InvoiceDiscountOut] = Field(
        description="One line per discount, in the order they applied; their amounts add up "
        "to `discount`."
    )
    tax: int
    total: int = Field(description="subtotal - discount + tax.")
    total_tax_amounts: list[TaxAmount]
    balance_applied: int = Field(
        description="The customer's credit balance that paid part of it at finalization."
    )
    amount_credited: int = Field(
        description="What credit notes took off its amount due while it was open."
    )
    credit_notes_total: int = Field(description="The totals of its credit notes not void.")
    amount_paid: int
    amount_due: int = Field(
        description="total - balance_applied - amount_credited - amount_paid: what is still "
        "asked of the customer."
    )
    amount_refunded: int
    refunds: list[RefundOut]
    payment_attempts: list[ChargeAttemptOut]
    next_payment_attempt: int | None = Field(
        description="When the next automatic attempt is planned (dunning), if any."
    )
    emails: list[EmailOut]
    document: DocumentOut | None = Field(description="The newest rendered PDF, if any yet.")
    created: int
    finalized_at: int | None
    paid_at: int | None
    voided_at: int | None
    marked_uncollectible_at: int | None
    tax_evidence: dict[str, Any] | None = Field(
        description="A reverse-charged invoice's VIES check of the buyer's VAT id, as "
        "answered (status, date, name), once asked; null otherwise."
    )
    hosted_invoice_url: str | None = Field(
        description="The invoice's own page for its customer (view, download, pay, replace "
        "the card), signed and unguessable; null for a draft or when hosted pages are off."
    )


# A field named `date` would shadow the type inside the class body.
_Day = date


class DunningStepOut(BaseModel):
    date: _Day
    action: Literal["retry_charge", "send_reminder", "final_notice", "mark_uncollectible"]
    reason: str
    status: Literal["done", "planned", "skipped"]
    step: str = Field(description="The step's name within the invoice's dunning.")


class DunningPreview(BaseModel):
    object: Literal["dunning_preview"] = "dunning_preview"
    invoice: str
    steps: list[DunningStepOut]


class InvoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InvoiceOut]
    has_more: bool


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    name: str
    queue: str
    state: Literal["pending", "sent", "running", "succeeded", "failed", "dead_lettered"]
    attempts: int
    error_code: Literal["retrying", "failed", "dead_lettered"] | None = Field(
        description="Why the job is not done, as a stable code: its last try failed and it "
        "will run again (retrying), or it failed for good (failed, dead_lettered)."
    )
    last_error: str | None = Field(
        description="The last try's error as recorded, for admin keys only (null otherwise)."
    )
    args: dict[str, Any]
    request_id: str | None
    created: int
    sent_at: int | None
    started_at: int | None
    finished_at: int | None


# Prices and subscriptions --------------------------------------------------------------


class PriceCreate(Strict):
    product: Annotated[Name, Field(description="The product's name, shown on invoice lines.")]
    unit_amount: Annotated[Amount, Field(description="Per unit and interval, minor units.")]
    currency: Currency
    interval: Interval
    tax_category: TaxCategory = TaxCategory.STANDARD


class PriceListQuery(ListQuery):
    pass


class PriceOut(BaseModel):
    id: str
    object: Literal["price"] = "price"
    product: str
    unit_amount: int
    currency: str
    interval: Interval
    tax_category: TaxCategory
    created: int


class PriceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PriceOut]
    has_more: bool


# Tax rates ----------------------------------------------------------------------------


Country = Annotated[
    str,
    StringConstraints(min_length=2, max_length=2),
    AfterValidator(lambda value: _country(value)),
    WithJsonSchema({"type": "string", "pattern": "^[A-Z]{2}$", "example": "DE"}),
]


class TaxRateCreate(Strict):
    display_name: Annotated[Text, StringConstraints(min_length=1, max_length=50)] = Field(
        description="What the invoice calls it: VAT, GST, Sales tax."
    )
    percentage: TaxRate
    inclusive: bool = Field(
        default=False,
        description="Prices taxed at it include the tax: a line's net and tax are worked out "
        "of its gross, the rate's tax rounded once on the rate's gross total. Chosen only "
        "by tax_rate_id on a line, never by the tax rules; such lines take no discount "
        "(422 discount_on_tax_inclusive_lines).",
    )
    country: Country
    region: Annotated[Text, StringConstraints(min_length=1, max_length=100)] | None = None
    tax_category: TaxCategory = TaxCategory.STANDARD


class TaxRateArchive(Strict):
    active: Literal[False] = Field(description="Only archiving: false.")


class TaxRateListQuery(ListQuery):
    active: bool | None = None


class TaxRateOut(BaseModel):
    id: str
    object: Literal["tax_rate"] = "tax_rate"
    display_name: str
    percentage: TaxRate
    inclusive: bool
    country: str
    region: str | None
    tax_category: TaxCategory
    active: bool
    created: int


class TaxRateList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaxRateOut]
    has_more: bool


class SubscriptionCreate(Strict):
    customer: ObjectId
    price: ObjectId
    quantity: Quantity = 1
    collection_method: CollectionMethod = CollectionMethod.CHARGE_AUTOMATICALLY
    days_until_due: Annotated[int, Field(ge=0, le=365)] | None = None
    start_date: date | None = Field(
        default=None,
        json_schema_extra={"format": "date"},
        description="The billing cycle anchor (UTC midnight), today or up to a year back; "
        "default: now.",
    )
    trial_period_days: Annotated[int, Field(ge=1, le=MAX_TRIAL_DAYS)] | None = Field(
        default=None,
        description="A free trial of this many days from now: nothing is invoiced until it "
        "ends, and the first period starts at its end. Not with trial_end or start_date.",
    )
    # Bounded by the last second a datetime holds (9999-12-31), so that any accepted value
    # converts; the service then refuses what lies past MAX_TRIAL_DAYS.
    trial_end: Annotated[int, Field(ge=0, le=253402300799)] | None = Field(
        default=None,
        description="A free trial until this time (Unix seconds, in the future, at most "
        f"{MAX_TRIAL_DAYS} days ahead). Not with trial_period_days or start_date.",
    )
    coupon: ObjectId | None = Field(default=None, description="A discount of its own.")
    promotion_code: ObjectId | None = Field(
        default=None, description="A discount of its own, from this promotion code's coupon."
    )


class SubscriptionUpdate(Strict):
    """Only the fields sent change; the rest of the period is prorated onto the next invoice."""

    model_config = ConfigDict(json_schema_extra=_drop_null_defaults)

    quantity: Quantity = None  # type: ignore[assignment]
    price: ObjectId = None  # type: ignore[assignment]


class SubscriptionCancel(Strict):
    at_period_end: bool = Field(
        default=True, description="True: at the end of the current period; false: now."
    )


class SubscriptionListQuery(ListQuery):
    customer: ObjectId | None = None
    status: SubscriptionStatus | None = None


class SubscriptionOut(BaseModel):
    id: str
    object: Literal["subscription"] = "subscription"
    customer: str
    price: PriceOut
    quantity: int
    status: SubscriptionStatus
    collection_method: CollectionMethod
    days_until_due: int | None
    billing_cycle_anchor: int
    current_period_start: int
    current_period_end: int
    cancel_at_period_end: bool
    canceled_at: int | None
    ended_at: int | None
    latest_invoice: str | None
    trial_start: int | None
    trial_end: int | None
    created: int


class SubscriptionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SubscriptionOut]
    has_more: bool


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# --- events and webhook endpoints -----------------------------------------------------------

# Credit notes and the customer balance ------------------------------------------------


class CreditNoteLineCreate(Strict):
    invoice_line: ObjectId = Field(description="The invoice's line this credits.")
    quantity: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = Field(
        default=None, description="Units of the line to credit (or give amount)."
    )
    amount: Annotated[int, Field(ge=1, le=99_999_999_999)] | None = Field(
        default=None, description="Net amount of the line to credit (or give quantity)."
    )


class SettlementIn(Strict):
    """How the credit note's total is settled; the parts sum to it."""

    amount_due: Amount = Field(default=0, description="Taken off the open invoice's amount due.")
    refund: Amount = Field(default=0, description="Refunded on the invoice's payment.")
    credit_balance: Amount = Field(default=0, description="Credited to the customer's balance.")
    out_of_band: Amount = Field(default=0, description="Settled outside; recorded only.")


class CreditNoteCreate(Strict):
    invoice: ObjectId
    lines: Annotated[list[CreditNoteLineCreate], Field(max_length=MAX_LINES_PER_INVOICE)] = []
    amount: Annotated[int, Field(ge=1, le=99_999_999_999)] | None = Field(
        default=None,
        description="A free amount, tax included, spread over the invoice's tax rates.",
    )
    reason: CreditNoteReason = CreditNoteReason.OTHER
    memo: Annotated[Memo, StringConstraints(max_length=1000)] | None = None
    currency: Currency | None = Field(default=None, description="Must be the invoice's.")
    settlement: SettlementIn | None = Field(
        default=None,
        description="Required unless the invoice is open and still asks at least the "
        "credit note's total, which is then taken off its amount due.",
    )
    metadata: Metadata = {}


class CreditNoteListQuery(ListQuery):
    customer: ObjectId | None = None
    invoice: ObjectId | None = None
    status: CreditNoteStatus | None = None


class CreditNoteLineOut(BaseModel):
    id: str | None
    object: Literal["credit_note_line_item"] = "credit_note_line_item"
    invoice_line: str | None
    description: str
    quantity: int | None
    tax_rate: TaxRate
    amount: int = Field(description="Net of tax.")
    tax: int


class SettlementOut(BaseModel):
    amount_due: int
    refund: int
    credit_balance: int
    out_of_band: int


class CreditNoteOut(BaseModel):
    id: str | None = Field(description="None on a preview.")
    object: Literal["credit_note"] = "credit_note"
    number: str | None = Field(description="None on a preview.")
    invoice: str
    customer: str
    currency: str
    status: CreditNoteStatus | None = Field(description="None on a preview.")
    reason: CreditNoteReason
    memo: str | None
    lines: list[CreditNoteLineOut]
    subtotal: int
    tax: int
    total: int
    total_tax_amounts: list[TaxAmount]
    settlement: SettlementOut
    refund: str | None = Field(default=None, description="The refund settling it, if any.")
    metadata: dict[str, str]
    created: int | None
    voided_at: int | None


class CreditNoteList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CreditNoteOut]
    has_more: bool


class BalanceTransactionCreate(Strict):
    amount: Annotated[int, Field(ge=-99_999_999_999, le=99_999_999_999)] = Field(
        description="Credit given (positive) or taken back (negative), in the customer's "
        "currency's minor units."
    )
    description: Annotated[Text, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Why: kept with the transaction."
    )


class BalanceTransactionOut(BaseModel):
    id: str
    object: Literal["customer_balance_transaction"] = "customer_balance_transaction"
    customer: str
    type: BalanceTransactionType
    amount: int
    currency: str
    balance_after: int = Field(description="The customer's balance after it.")
    credit_note: str | None
    invoice: str | None
    description: str | None
    created: int


class BalanceTransactionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BalanceTransactionOut]
    has_more: bool


UnixTime = Annotated[int, Field(ge=0, le=2**40)]


class EventListQuery(ListQuery):
    type: EventType | None = None
    object_id: ObjectId | None = None
    created_gte: UnixTime | None = Field(default=None, description="Created at or after.")
    created_lte: UnixTime | None = Field(default=None, description="Created at or before.")


class EventData(BaseModel):
    object_type: Literal[
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
    ]
    object: dict[str, Any] = Field(description="The object as the API showed it then.")


class EventRequest(BaseModel):
    id: str | None


class EventOut(BaseModel):
    id: str
    object: Literal["event"] = "event"
    type: EventType
    created: int
    sequence: int = Field(
        description="Grows with each event of the same object (not contiguous): a receiver "
        "drops an event older than the newest it applied for that object."
    )
    customer: str | None
    data: EventData
    request: EventRequest


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventOut]
    has_more: bool


WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
EnabledEvents = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
    Field(min_length=1, max_length=len(EventType) + 1, description='Event types, or ["*"].'),
]
WebhookDescription = Annotated[Text, StringConstraints(max_length=500)]


class WebhookEndpointCreate(Strict):
    url: WebhookUrl
    enabled_events: EnabledEvents
    description: WebhookDescription | None = None
    enabled: bool = True


class WebhookEndpointUpdate(Strict):
    """Only the fields sent change; description can be null (cleared)."""

    model_config = ConfigDict(json_schema_extra=_drop_null_defaults)

    url: WebhookUrl = None  # type: ignore[assignment]
    enabled_events: EnabledEvents = None  # type: ignore[assignment]
    description: WebhookDescription | None = None
    enabled: bool = None  # type: ignore[assignment]


class RollSecret(Strict):
    overlap_seconds: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] | None = Field(
        default=None,
        description="How long the current secrets keep signing (default: the setting).",
    )


class WebhookEndpointOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    enabled_events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created: int
    secret: str | None = Field(
        default=None, description="The signing secret: shown only when created or rolled."
    )


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointOut]
    has_more: bool


class WebhookDeliveryListQuery(ListQuery):
    state: Literal["waiting", "pending", "succeeded", "failed", "canceled"] | None = None


class WebhookAttemptOut(BaseModel):
    outcome: Literal["delivered", "failed", "gone", "refused"]
    status_code: int | None
    duration_ms: int
    error: str | None
    response_excerpt: str | None
    created: int


class WebhookDeliveryOut(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint: str
    event: str
    event_sequence: int
    state: Literal["waiting", "pending", "succeeded", "failed", "canceled"]
    attempts: list[WebhookAttemptOut]
    next_attempt: int | None
    created: int
    finished_at: int | None


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryOut]
    has_more: bool


# --- coupons, promotion codes and discounts ----------------------------------------------


class CouponCreate(Strict):
    name: Name
    percent_off: PercentOff | None = None
    amount_off: Annotated[int, Field(ge=1, le=99_999_999_999)] | None = Field(
        default=None, description="Minor units of `currency`."
    )
    currency: Currency | None = None
    duration: Literal["once", "repeating", "forever"] = "once"
    duration_in_months: Annotated[int, Field(ge=1, le=120)] | None = None
    max_redemptions: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    redeem_by: Timestamp | None = Field(default=None, description="The last moment to redeem it.")
    metadata: Metadata = Field(default_factory=dict)


class CouponOut(BaseModel):
    id: str
    object: Literal["coupon"] = "coupon"
    name: str
    percent_off: PercentOff | None
    amount_off: int | None
    currency: str | None
    duration: Literal["once", "repeating", "forever"]
    duration_in_months: int | None
    max_redemptions: int | None
    redeem_by: int | None
    times_redeemed: int
    valid: bool = Field(description="It can still be redeemed.")
    metadata: dict[str, str]
    created: int


class CouponList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CouponOut]
    has_more: bool


class PromotionCodeCreate(Strict):
    code: PromotionCodeText = Field(description="What customers type; unique, whatever its case.")
    coupon: ObjectId
    customer: ObjectId | None = Field(default=None, description="Only this customer may use it.")
    max_redemptions: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    expires_at: Timestamp | None = None
    active: bool = True


class PromotionCodeUpdate(Strict):
    active: bool


class PromotionCodeListQuery(ListQuery):
    code: PromotionCodeText | None = None
    coupon: ObjectId | None = None
    active: bool | None = None


class PromotionCodeOut(BaseModel):
    id: str
    object: Literal["promotion_code"] = "promotion_code"
    code: str
    coupon: CouponOut
    active: bool
    customer: str | None
    max_redemptions: int | None
    expires_at: int | None
    times_redeemed: int
    created: int


class PromotionCodeList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PromotionCodeOut]
    has_more: bool


class DiscountOut(BaseModel):
    id: str
    object: Literal["discount"] = "discount"
    coupon: CouponOut
    promotion_code: str | None
    customer: str
    subscription: str | None
    invoice: str | None
    start: int
    end: int | None = Field(description="When a repeating discount ends.")
    ended_at: int | None = Field(description="When it stopped early: removed, or used up.")
    created: int


class DiscountList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DiscountOut]
