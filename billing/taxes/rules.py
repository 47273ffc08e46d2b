"""Tax rules, pure: which rate a line takes and why, and what a tax id must look like.

The rules table (docs/design/taxes.md), first match wins:

1. the customer's tax status is `exempt`, or the product's category is `exempt`
   -> `exempt`, 0%;
2. the seller is in the EU and the customer's country is outside it -> `zero_rated_export`,
   0% (the supply is not taxed in the EU; the buyer's own import rules apply);
3. the seller is outside the EU and the customer is in another country -> also
   `zero_rated_export`: we only ever charge the seller's own country's tax;
4. seller and customer in different EU member states, the customer a `business` with a
   valid EU VAT id -> `reverse_charge`, 0%, with the Directive's wording on the document;
5. otherwise `standard`, at the active rate of the product's category in:
   - the customer's country for an EU cross-border sale to a consumer (a business without
     a VAT id counts as one), when such a rate object exists (the seller registered for
     OSS and entered that country's rates); else the seller's country;
   - the seller's country for a domestic sale, and when the customer has no country on
     file (the place of supply then falls back to the supplier's establishment);
   - a `zero` category is taxed at 0% within `standard`.
   No active rate for that country and category (or no SELLER_COUNTRY set): 0%, no rate
   object, still `standard`: a seller who configured no taxes charges none, as before.

A caller's own percentage on a line (or a chosen rate object) is `manual`.

The rules choose among exclusive rates only: the prices they tax (products, subscriptions)
are net. A tax-inclusive rate is one a caller picks for a line whose price holds its tax;
such a line's net and tax are worked out of its gross by billing.invoicing.rules.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal


class TaxStatus(enum.StrEnum):
    BUSINESS = "business"
    INDIVIDUAL = "individual"
    EXEMPT = "exempt"


class TaxCategory(enum.StrEnum):
    STANDARD = "standard"
    REDUCED = "reduced"
    ZERO = "zero"
    EXEMPT = "exempt"


class TaxReason(enum.StrEnum):
    STANDARD = "standard"
    REVERSE_CHARGE = "reverse_charge"
    ZERO_RATED_EXPORT = "zero_rated_export"
    EXEMPT = "exempt"
    MANUAL = "manual"


class TaxIdType(enum.StrEnum):
    EU_VAT = "eu_vat"
    GB_VAT = "gb_vat"
    CH_VAT = "ch_vat"
    NO_VAT = "no_vat"
    US_EIN = "us_ein"
    AU_ABN = "au_abn"
    IN_GST = "in_gst"


# The 27 member states by ISO 3166 alpha-2 (Greece is GR here, EL only in VAT ids).
EU_MEMBER_STATES = frozenset(
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split()
)

REVERSE_CHARGE_NOTICE = (
    "Reverse charge: VAT to be accounted for by the recipient, "
    "Article 196 Council Directive 2006/112/EC"
)
_NOTICES = {
    TaxReason.REVERSE_CHARGE: REVERSE_CHARGE_NOTICE,
    TaxReason.ZERO_RATED_EXPORT: "Zero-rated export: supply outside the scope of VAT of the "
    "seller's country",
    TaxReason.EXEMPT: "Exempt from VAT",
}


def legal_notice(reason: str | None) -> str | None:
    """The wording a document prints for lines taxed for `reason`, if the law asks one."""
    if reason is None:
        return None
    try:
        return _NOTICES.get(TaxReason(reason))
    except ValueError:
        return None


def legal_notices(reasons: Iterable[str | None]) -> tuple[str, ...]:
    """The wordings a document with lines taxed for `reasons` prints, each once, in the
    order of the lines."""
    notices = (legal_notice(reason) for reason in reasons)
    return tuple(dict.fromkeys(notice for notice in notices if notice is not None))


@dataclass(frozen=True)
class RateOption:
    """An active tax rate object the rules may choose."""

    id: str
    percentage: Decimal
    country: str
    category: TaxCategory = TaxCategory.STANDARD
    region: str | None = None


@dataclass(frozen=True)
class Buyer:
    country: str | None
    region: str | None = None
    status: TaxStatus = TaxStatus.INDIVIDUAL
    # Set only for an id that passed validation (`validate_tax_id`).
    tax_id_type: TaxIdType | None = None


@dataclass(frozen=True)
class TaxDecision:
    percentage: Decimal
    reason: TaxReason
    rate_id: str | None = None
    # The line's price holds its tax (a tax-inclusive rate object chosen for it).
    inclusive: bool = False

    @property
    def notice(self) -> str | None:
        return legal_notice(self.reason)


ZERO = Decimal(0)


def decide(
    *,
    seller_country: str | None,
    buyer: Buyer,
    category: TaxCategory,
    rates: Sequence[RateOption],
) -> TaxDecision:
    """Which rate a line takes and why (the table in this module's docstring)."""
    if buyer.status is TaxStatus.EXEMPT or category is TaxCategory.EXEMPT:
        return TaxDecision(ZERO, TaxReason.EXEMPT)
    if seller_country is None:
        return TaxDecision(ZERO, TaxReason.STANDARD)
    seller_in_eu = seller_country in EU_MEMBER_STATES
    abroad = buyer.country is not None and buyer.country != seller_country
    if abroad and (not seller_in_eu or buyer.country not in EU_MEMBER_STATES):
        return TaxDecision(ZERO, TaxReason.ZERO_RATED_EXPORT)
    if abroad and buyer.status is TaxStatus.BUSINESS and buyer.tax_id_type is TaxIdType.EU_VAT:
        return TaxDecision(ZERO, TaxReason.REVERSE_CHARGE)
    chosen: RateOption | None = None
    if abroad:
        # EU B2C across borders: the customer's country's rate under OSS, when configured.
        chosen = _rate_of(rates, buyer.country, buyer.region, category)
    if chosen is None:
        region = buyer.region if buyer.country == seller_country else None
        chosen = _rate_of(rates, seller_country, region, category)
    if chosen is None:
        return TaxDecision(ZERO, TaxReason.STANDARD)
    percentage = ZERO if category is TaxCategory.ZERO else chosen.percentage
    return TaxDecision(percentage, TaxReason.STANDARD, chosen.id)


def _rate_of(
    rates: Sequence[RateOption], country: str | None, region: str | None, category: TaxCategory
) -> RateOption | None:
    """The country's rate of `category`, the region's own first; the oldest on a tie.
    A zero category takes the standard rate object as its reference, at 0%."""
    wanted = TaxCategory.STANDARD if category is TaxCategory.ZERO else category
    fitting = [r for r in rates if r.country == country and r.category is wanted]
    regional = [r for r in fitting if region is not None and r.region == region]
    national = [r for r in fitting if r.region is None]
    for candidates in (regional, national):
        if candidates:
            return min(candidates, key=lambda r: r.id)
    return None


class TaxIdInvalid(ValueError):
    pass


def validate_tax_id(kind: TaxIdType, value: str) -> str:
    """The tax id in its compact form (no spaces or dots, upper case, with its country
    prefix for VAT ids), once its format and check digits are right; TaxIdInvalid if not."""
    from stdnum import exceptions
    from stdnum.au import abn
    from stdnum.ch import vat as ch_vat
    from stdnum.eu import vat as eu_vat
    from stdnum.gb import vat as gb_vat
    from stdnum.in_ import gstin
    from stdnum.no import mva
    from stdnum.us import ein

    validators = {
        TaxIdType.EU_VAT: eu_vat,
        TaxIdType.GB_VAT: gb_vat,
        TaxIdType.CH_VAT: ch_vat,
        TaxIdType.NO_VAT: mva,
        TaxIdType.US_EIN: ein,
        TaxIdType.AU_ABN: abn,
        TaxIdType.IN_GST: gstin,
    }
    module = validators[kind]
    try:
        compact = str(module.validate(value))
    except exceptions.ValidationError as exc:
        raise TaxIdInvalid(f"'{value}' is not a valid {kind.value} number: {exc}") from exc
    if kind is TaxIdType.EU_VAT:
        # stdnum.eu.vat also takes some non-member prefixes (XI for Northern Ireland): an
        # EU VAT id is one a member state issued, and VIES knows.
        if compact[:2] not in {*EU_MEMBER_STATES - {"GR"}, "EL"}:
            raise TaxIdInvalid(f"'{value}' is not a VAT id of an EU member state")
    if kind is TaxIdType.GB_VAT and not compact.startswith("GB"):
        compact = "GB" + compact
    if kind is TaxIdType.NO_VAT and not compact.startswith("NO"):
        compact = "NO" + compact
    return compact


VAT_ID_TYPES = frozenset({TaxIdType.EU_VAT, TaxIdType.GB_VAT, TaxIdType.CH_VAT, TaxIdType.NO_VAT})


def vat_identifier(kind: str | None, tax_id: str | None) -> str | None:
    """The buyer's VAT identifier as an e-invoice states it (country prefix first), or None
    when its tax id is of another kind (an EIN, an ABN): those are no VAT ids. A tax id
    typed before ids had a kind counts as a VAT id when it starts with a country prefix."""
    if not tax_id:
        return None
    if kind is None:
        return tax_id if tax_id[:2].isalpha() else None
    return tax_id if kind in VAT_ID_TYPES else None


def vat_number_parts(compact_eu_vat: str) -> tuple[str, str]:
    """(countryCode, vatNumber) as VIES asks them: "DE", "123456789"."""
    return compact_eu_vat[:2], compact_eu_vat[2:]
