"""Invoices and credit notes as their documents see them: plain values, no ORM objects.

Two layers: the figures (`DocumentFigures`: every amount in minor units, each line's net,
discount, rate, tax and tax reason, the totals), read once from the invoice or the credit
note, and the text the PDF templates place, formatted from those figures. The e-invoice
(`billing.einvoices`) reads the same figures, so the PDF and the XML can never disagree on
an amount.

Built from a `billing.models.Invoice` (with `.customer` and `.lines` loaded) and the
seller's details; a finalized invoice shows the parties it was issued with (its
snapshot), a draft the current ones. A credit note shows the parties of the invoice it
corrects. Every amount and date is formatted here for the
reader's locale with Babel, so the template only places text. Nothing here touches a
database session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent

from billing.domain import parties
from billing.domain.credit_note_words import reason_in_words, settlement_in_words
from billing.domain.money import Money
from billing.taxes.rules import legal_notices

if TYPE_CHECKING:
    from billing.models import CreditNote, Customer, Invoice, InvoiceDiscount, InvoiceLine


@dataclass(frozen=True)
class Seller:
    """Who issues the invoices, from configuration."""

    name: str
    address_lines: tuple[str, ...] = ()
    tax_id: str | None = None
    email: str | None = None
    logo_path: str | None = None  # a PNG/SVG file on disk, read once and embedded (data: URI)
    payment_instructions: str | None = None  # e.g. bank transfer details for send_invoice
    # The address in parts and how to pay, as an e-invoice needs them.
    street: str | None = None
    city: str | None = None
    postal_code: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2
    phone: str | None = None
    iban: str | None = None
    bic: str | None = None


# Countries whose postal addresses put the city first: "City, ST 12345".
CITY_FIRST = frozenset({"US", "CA", "AU"})


@dataclass(frozen=True)
class PostalAddress:
    """An address in parts, as an e-invoice needs it; `country` is ISO 3166-1 alpha-2."""

    street: str | None = None
    additional: str | None = None
    city: str | None = None
    postal_code: str | None = None
    region: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class PartyView:
    name: str
    address_lines: tuple[str, ...] = ()
    tax_id: str | None = None
    # The buyer's tax id scheme (billing.taxes.rules.TaxIdType), when it has one.
    tax_id_type: str | None = None
    email: str | None = None
    postal: PostalAddress = PostalAddress()


@dataclass(frozen=True)
class LineView:
    description: str
    quantity: str
    unit_price: str
    tax_rate: str
    amount: str


@dataclass(frozen=True)
class TaxRowView:
    rate: str
    net: str
    tax: str


@dataclass(frozen=True)
class TotalRowView:
    label: str
    value: str
    kind: str = ""  # "grand" for the total, "due" for the amount due


@dataclass(frozen=True)
class PaymentView:
    kind: str  # paid | void | draft | charge | send | uncollectible
    headline: str
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class LineFigures:
    """One line in minor units: `amount` before discounts, `net` = amount - discount, the
    amount its tax was computed on."""

    id: str
    description: str
    quantity: int | None  # None: a credit note's free amount
    unit_amount: int | None
    amount: int
    discount: int
    net: int
    tax_rate: Decimal
    tax: int
    # Why its rate (standard, reverse_charge, zero_rated_export, exempt, manual) or None.
    tax_reason: str | None
    # A tax-inclusive line's unit price as given, tax included; its `unit_amount` is then
    # None: its net unit price need not be a whole number of minor units.
    unit_amount_with_tax: int | None = None


@dataclass(frozen=True)
class DocumentFigures:
    """An invoice's or a credit note's amounts in minor units of `currency` (lower case)."""

    currency: str
    lines: tuple[LineFigures, ...]
    subtotal: int  # the lines' amounts before discounts
    discount: int
    tax: int
    total: int  # subtotal - discount + tax
    amount_paid: int = 0
    balance_applied: int = 0
    amount_credited: int = 0
    amount_refunded: int = 0
    # (description, amount) of each discount that took something off.
    discounts: tuple[tuple[str, int], ...] = ()

    @property
    def net_total(self) -> int:
        return self.subtotal - self.discount

    @property
    def prepaid(self) -> int:
        """What settled part of the total before now: paid, the balance applied, credited."""
        return self.amount_paid + self.balance_applied + self.amount_credited

    @property
    def amount_due(self) -> int:
        return self.total - self.prepaid


@dataclass(frozen=True)
class InvoiceView:
    title: str
    number: str
    status: str
    lang: str  # BCP 47, for <html lang>
    issue_date: str | None
    due_date: str | None
    seller: PartyView
    logo_uri: str | None
    buyer: PartyView
    description: str | None
    currency: str
    lines: tuple[LineView, ...]
    tax_summary: tuple[TaxRowView, ...]
    totals: tuple[TotalRowView, ...]
    payment: PaymentView
    created: str | None  # W3C date-time for the PDF metadata: the invoice's, never now()
    figures: DocumentFigures
    # What the law asks printed for its lines' tax treatment (reverse charge, export...).
    tax_notices: tuple[str, ...] = ()
    issued_on: date | None = None
    due_on: date | None = None
    collection_method: str = "send_invoice"
    buyer_reference: str | None = None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _w3c(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def _money(minor_units: int, currency: str, locale: Locale) -> str:
    """Babel's formatting is a pure function of these and costs far more than a lookup: a
    document shows the same few amounts (prices, totals) many times."""
    amount = Money(minor_units, currency)
    # currency_digits: the currency's own exponent (JPY none, KWD three), as Money uses.
    return format_currency(
        amount.as_decimal(), amount.currency.upper(), locale=locale, currency_digits=True
    )


@lru_cache(maxsize=1024)
def _quantity(quantity: int, locale: Locale) -> str:
    return format_decimal(quantity, locale=locale)


@lru_cache(maxsize=1024)
def _percent(percent: Decimal, locale: Locale) -> str:
    return format_percent(percent / 100, locale=locale, decimal_quantization=False)


@lru_cache(maxsize=1024)
def _day_text(day: date, locale: Locale) -> str:
    return format_date(day, format="medium", locale=locale)


class Formatter:
    """Money, numbers, percentages and dates in one locale."""

    def __init__(self, locale: str, currency: str) -> None:
        self.locale = Locale.parse(locale.replace("-", "_"))
        self.currency = currency

    def money(self, minor_units: int) -> str:
        return _money(int(minor_units), self.currency, self.locale)

    def quantity(self, quantity: int) -> str:
        return _quantity(quantity, self.locale)

    def rate(self, percent: Decimal) -> str:
        return _percent(percent, self.locale)

    def date(self, value: date | datetime | None) -> str | None:
        if value is None:
            return None
        day = _utc(value).date() if isinstance(value, datetime) else value
        return _day_text(day, self.locale)


def _text(value: Any) -> str | None:
    """A customer-supplied scalar as trimmed text, or None when empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def address_lines(address: Mapping[str, Any] | None, formatter: Formatter) -> tuple[str, ...]:
    """Stripe-shaped address JSON (line1, line2, postal_code, city, state, country) as lines."""
    if not isinstance(address, Mapping):
        return ()
    get = {key: _text(address.get(key)) for key in ("line1", "line2", "postal_code", "city")}
    state, country = _text(address.get("state")), _text(address.get("country"))
    code = country.upper() if country else None
    lines = [get["line1"], get["line2"]]
    if code in CITY_FIRST:
        region = " ".join(part for part in (state, get["postal_code"]) if part)
        lines.append(", ".join(part for part in (get["city"], region) if part))
    else:
        lines.append(" ".join(part for part in (get["postal_code"], get["city"]) if part))
        lines.append(state)
    if code:
        lines.append(formatter.locale.territories.get(code, country) if len(code) == 2 else country)
    return tuple(line for line in lines if line)


def _amount(value: Any) -> int:
    """An amount column in minor units (0 on a transient object that never set it)."""
    return int(value or 0)


def _rate(value: Any) -> Decimal:
    return Decimal(str(value if value is not None else 0))


def tax_summary(
    rows: Iterable[tuple[Any, int, int]], formatter: Formatter
) -> tuple[TaxRowView, ...]:
    """Net and tax per rate, lowest rate first, from (rate, net, tax) per line: the sums of
    the lines' own rounded taxes."""
    per_rate: dict[Decimal, list[int]] = {}
    for rate, net, tax in rows:
        sums = per_rate.setdefault(_rate(rate).normalize(), [0, 0])
        sums[0] += net
        sums[1] += tax
    return tuple(
        TaxRowView(formatter.rate(rate), formatter.money(net), formatter.money(tax))
        for rate, (net, tax) in sorted(per_rate.items())
    )


def taxed_net(lines: Iterable[LineFigures]) -> list[tuple[Any, int, int]]:
    """Each line's rate, the net its tax was computed on (its amount less its share of the
    invoice's discounts) and that tax."""
    return [(line.tax_rate, line.net, line.tax) for line in lines]


def tax_reason(line: Any) -> str | None:
    # Read softly: the column comes with the tax rules and older rows have none.
    reason = getattr(line, "tax_reason", None)
    return str(reason) if reason else None


def invoice_line_figures(line: InvoiceLine) -> LineFigures:
    amount, discount = _amount(line.amount), _amount(line.discount_amount)
    # Read softly, as tax_reason: older rows have no such column.
    inclusive = bool(getattr(line, "tax_inclusive", False))
    return LineFigures(
        id=str(line.id),
        description=str(line.description),
        quantity=int(line.quantity),
        unit_amount=None if inclusive else _amount(line.unit_amount),
        unit_amount_with_tax=_amount(line.unit_amount) if inclusive else None,
        amount=amount,
        discount=discount,
        net=amount - discount,
        tax_rate=_rate(line.tax_rate),
        tax=_amount(line.tax),
        tax_reason=tax_reason(line),
    )


def unit_price(line: LineFigures, formatter: Formatter) -> str:
    """The unit price a document prints: net, or as given with its tax for a tax-inclusive
    line (whose amount column is still net)."""
    if line.unit_amount_with_tax is not None:
        return f"{formatter.money(line.unit_amount_with_tax)} incl. tax"
    return formatter.money(line.unit_amount or 0)


def invoice_figures(invoice: Invoice, discounts: Sequence[InvoiceDiscount] = ()) -> DocumentFigures:
    return DocumentFigures(
        currency=invoice.currency.lower(),
        lines=tuple(invoice_line_figures(line) for line in invoice.lines),
        subtotal=_amount(invoice.subtotal),
        discount=_amount(invoice.discount),
        tax=_amount(invoice.tax),
        total=_amount(invoice.total),
        amount_paid=_amount(invoice.amount_paid),
        balance_applied=_amount(invoice.balance_applied),
        amount_credited=_amount(invoice.amount_credited),
        amount_refunded=_amount(invoice.amount_refunded),
        discounts=tuple(
            (str(d.description), _amount(d.amount)) for d in discounts if _amount(d.amount) > 0
        ),
    )


def credit_note_figures(credit_note: CreditNote) -> DocumentFigures:
    lines = tuple(
        LineFigures(
            id=str(line.id),
            description=str(line.description),
            quantity=int(line.quantity) if line.quantity else None,
            unit_amount=None,
            amount=_amount(line.amount),
            discount=0,
            net=_amount(line.amount),
            tax_rate=_rate(line.tax_rate),
            tax=_amount(line.tax),
            tax_reason=tax_reason(line),
        )
        for line in credit_note.lines
    )
    return DocumentFigures(
        currency=credit_note.currency.lower(),
        lines=lines,
        subtotal=_amount(credit_note.subtotal),
        discount=0,
        tax=_amount(credit_note.tax),
        total=_amount(credit_note.total),
    )


def payment(invoice: Invoice, seller: Seller, formatter: Formatter) -> PaymentView:
    due = formatter.money(invoice.amount_due)
    due_date = formatter.date(invoice.due_date)
    if invoice.status == "paid":
        paid_on = formatter.date(invoice.paid_at)
        return PaymentView("paid", f"Paid on {paid_on}" if paid_on else "Paid")
    if invoice.status == "void":
        voided_on = formatter.date(invoice.voided_at)
        when = f" on {voided_on}" if voided_on else ""
        return PaymentView("void", "VOID", (f"This invoice was voided{when}. Nothing is owed.",))
    if invoice.status == "draft":
        return PaymentView("draft", "DRAFT", ("This is a draft, not a request for payment.",))
    if invoice.status == "uncollectible":
        headline = f"{due} is overdue"
    elif invoice.collection_method == "charge_automatically":
        return PaymentView(
            "charge", f"{due} will be charged automatically to the card on file. No action needed."
        )
    else:
        headline = f"Please pay {due} by {due_date}" if due_date else f"Please pay {due}"
    details = tuple((seller.payment_instructions or "").splitlines())
    if invoice.number:
        details += (f"Please quote invoice number {invoice.number} with your payment.",)
    kind = "uncollectible" if invoice.status == "uncollectible" else "send"
    return PaymentView(kind, headline, details)


def discount_rows(figures: DocumentFigures, formatter: Formatter) -> list[TotalRowView]:
    """One row per coupon that took something off, as a deduction; then their sum as
    "Discount" when there are several (or, for an invoice whose discount lines are
    missing, the invoice's discount alone)."""
    rows = [
        TotalRowView(description, formatter.money(-amount), "discount")
        for description, amount in figures.discounts
    ]
    discount = figures.discount
    if discount > 0 and len(rows) != 1:
        rows.append(TotalRowView("Discount", formatter.money(-discount), "discount"))
    return rows


def totals(figures: DocumentFigures, formatter: Formatter) -> tuple[TotalRowView, ...]:
    rows = [
        TotalRowView("Subtotal", formatter.money(figures.subtotal)),
        *discount_rows(figures, formatter),
        TotalRowView("Tax", formatter.money(figures.tax)),
        TotalRowView("Total", formatter.money(figures.total), "grand"),
        TotalRowView("Amount paid", formatter.money(figures.amount_paid)),
    ]
    # What settled part of it without a payment: shown only where it happened.
    for label, amount in (
        ("Applied from your credit balance", figures.balance_applied),
        ("Credited", figures.amount_credited),
        ("Amount refunded", figures.amount_refunded),
    ):
        if amount > 0:
            rows.append(TotalRowView(label, formatter.money(amount)))
    rows.append(TotalRowView("Amount due", formatter.money(figures.amount_due), "due"))
    return tuple(rows)


def _day(moment: date | datetime | None) -> date | None:
    if moment is None:
        return None
    return _utc(moment).date() if isinstance(moment, datetime) else moment


def seller_view(invoice: Invoice, seller: Seller) -> PartyView:
    """The seller as the invoice was issued by, else as configured now (a draft)."""
    configured_postal = parties.seller_postal_address(
        seller.street, seller.city, seller.postal_code, seller.country
    )
    party = parties.shown(
        invoice.seller_party,
        parties.seller_party(
            seller.name, seller.address_lines, seller.tax_id, seller.email, configured_postal
        ),
    )
    # Invoices issued before the seller's address was kept in parts take today's.
    postal = party.get("postal_address") or configured_postal or {}
    return PartyView(
        name=str(party.get("name") or ""),
        address_lines=tuple(str(line) for line in party.get("address_lines") or ()),
        tax_id=_text(party.get("tax_id")),
        email=_text(party.get("email")),
        postal=PostalAddress(
            street=_text(postal.get("street")),
            city=_text(postal.get("city")),
            postal_code=_text(postal.get("postal_code")),
            country=_country(postal.get("country")),
        ),
    )


def _country(value: Any) -> str | None:
    text = _text(value)
    return text.upper() if text else None


def postal_address(address: Mapping[str, Any] | None) -> PostalAddress:
    """Stripe-shaped address JSON in parts."""
    if not isinstance(address, Mapping):
        return PostalAddress()
    return PostalAddress(
        street=_text(address.get("line1")),
        additional=_text(address.get("line2")),
        city=_text(address.get("city")),
        postal_code=_text(address.get("postal_code")),
        region=_text(address.get("state")),
        country=_country(address.get("country")),
    )


def current_buyer(customer: Customer) -> dict[str, Any]:
    return parties.buyer_party(
        customer.name, customer.email, customer.address, customer.tax_id, customer.tax_id_type
    )


def buyer(invoice: Invoice, formatter: Formatter) -> PartyView:
    """The buyer as the invoice was issued to, else the customer as it is now (a draft)."""
    party = parties.shown(invoice.buyer_party, current_buyer(invoice.customer))
    return PartyView(
        name=str(party.get("name") or ""),
        address_lines=address_lines(party.get("address"), formatter),
        tax_id=_text(party.get("tax_id")),
        tax_id_type=_text(party.get("tax_id_type")),
        email=_text(party.get("email")),
        postal=postal_address(party.get("address")),
    )


def invoice_view(
    invoice: Invoice,
    seller: Seller,
    locale: str,
    logo_uri: str | None = None,
    discounts: Sequence[InvoiceDiscount] = (),
) -> InvoiceView:
    formatter = Formatter(locale, invoice.currency)
    figures = invoice_figures(invoice, discounts)
    issued = invoice.finalized_at
    return InvoiceView(
        title="Invoice",
        number=invoice.number or "Draft",
        status=invoice.status,
        lang=str(formatter.locale).replace("_", "-"),
        issue_date=formatter.date(issued),
        due_date=formatter.date(invoice.due_date),
        seller=seller_view(invoice, seller),
        logo_uri=logo_uri,
        buyer=buyer(invoice, formatter),
        description=_text(invoice.description),
        currency=invoice.currency.upper(),
        lines=tuple(
            LineView(
                description=line.description,
                quantity=formatter.quantity(line.quantity or 0),
                unit_price=unit_price(line, formatter),
                tax_rate=formatter.rate(line.tax_rate),
                amount=formatter.money(line.amount),
            )
            for line in figures.lines
        ),
        tax_summary=tax_summary(taxed_net(figures.lines), formatter),
        totals=totals(figures, formatter),
        payment=payment(invoice, seller, formatter),
        created=_w3c(issued or invoice.created_at),
        figures=figures,
        issued_on=_day(issued),
        due_on=invoice.due_date,
        collection_method=str(invoice.collection_method or "send_invoice"),
        buyer_reference=_text(invoice.buyer_reference),
        tax_notices=legal_notices(line.tax_reason for line in figures.lines),
    )


@dataclass(frozen=True)
class CreditLineView:
    description: str
    quantity: str  # "" for a free amount
    tax_rate: str
    amount: str  # net
    tax: str


@dataclass(frozen=True)
class CreditNoteView:
    title: str
    number: str
    status: str
    lang: str
    issue_date: str | None
    # "Credit note for invoice INV-2026-000012 of Mar 5, 2026"
    reference: str
    invoice_number: str
    seller: PartyView
    logo_uri: str | None
    buyer: PartyView
    reason: str | None
    memo: str | None
    currency: str
    lines: tuple[CreditLineView, ...]
    tax_summary: tuple[TaxRowView, ...]
    totals: tuple[TotalRowView, ...]
    # How its total was settled: (what happened, amount) for each part that is not zero.
    settlement: tuple[TotalRowView, ...]
    void_notice: str | None  # set when void: the stamp and why nothing stands
    created: str | None
    figures: DocumentFigures
    issued_on: date | None = None
    invoice_issued_on: date | None = None
    buyer_reference: str | None = None  # the corrected invoice's


def credit_note_view(
    credit_note: CreditNote,
    invoice: Invoice,
    seller: Seller,
    locale: str,
    logo_uri: str | None = None,
) -> CreditNoteView:
    """`invoice` is the one the note corrects (its customer loaded), whose parties it shows."""
    formatter = Formatter(locale, credit_note.currency)
    figures = credit_note_figures(credit_note)
    invoice_number = invoice.number or invoice.id
    invoice_date = formatter.date(invoice.finalized_at)
    reference = f"Credit note for invoice {invoice_number}"
    if invoice_date:
        reference += f" of {invoice_date}"
    void_notice = None
    if credit_note.status == "void":
        voided_on = formatter.date(credit_note.voided_at)
        when = f" on {voided_on}" if voided_on else ""
        void_notice = f"This credit note was voided{when}. It credits nothing."
    return CreditNoteView(
        title="Credit note",
        number=credit_note.number,
        status=credit_note.status,
        lang=str(formatter.locale).replace("_", "-"),
        issue_date=formatter.date(credit_note.issued_at),
        reference=reference,
        invoice_number=invoice_number,
        seller=seller_view(invoice, seller),
        logo_uri=logo_uri,
        buyer=buyer(invoice, formatter),
        reason=reason_in_words(credit_note.reason),
        memo=_text(credit_note.memo),
        currency=credit_note.currency.upper(),
        lines=tuple(
            CreditLineView(
                description=line.description,
                quantity=formatter.quantity(line.quantity) if line.quantity else "",
                tax_rate=formatter.rate(line.tax_rate),
                amount=formatter.money(line.amount),
                tax=formatter.money(line.tax),
            )
            for line in figures.lines
        ),
        tax_summary=tax_summary(taxed_net(figures.lines), formatter),
        totals=(
            TotalRowView("Subtotal", formatter.money(figures.subtotal)),
            TotalRowView("Tax", formatter.money(figures.tax)),
            TotalRowView("Total", formatter.money(figures.total), "grand"),
        ),
        settlement=tuple(
            TotalRowView(words, formatter.money(amount))
            for words, amount in settlement_in_words(credit_note)
        ),
        void_notice=void_notice,
        created=_w3c(credit_note.issued_at),
        figures=figures,
        issued_on=_day(credit_note.issued_at),
        invoice_issued_on=_day(invoice.finalized_at),
        buyer_reference=_text(invoice.buyer_reference),
    )
