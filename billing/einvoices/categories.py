"""The EN 16931 VAT category (UNCL 5305) of a line, from why it was taxed at its rate.

Pure. The tax rules record each line's reason (`invoice_lines.tax_reason`); lines older than
that have none, and a rate alone then says standard (above 0) or zero rated (0).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

STANDARD = "S"
ZERO_RATED = "Z"
EXEMPT = "E"
REVERSE_CHARGE = "AE"
EXPORT = "G"


class InconsistentTaxReason(ValueError):
    """A reason that allows no VAT on a line that charged some."""


@dataclass(frozen=True)
class VatCategory:
    code: str
    # BT-120 / BT-121: categories E, AE and G must say why no VAT is charged.
    exemption_reason: str | None = None
    exemption_code: str | None = None  # VATEX (CEF code list)


REVERSE_CHARGE_CATEGORY = VatCategory(REVERSE_CHARGE, "Reverse charge", "VATEX-EU-AE")
EXPORT_CATEGORY = VatCategory(EXPORT, "Export outside the EU", "VATEX-EU-G")
# Article 132 of the VAT directive lists the activities in the public interest that are
# exempt; a more precise code needs the tax rules to record which one applied.
EXEMPT_CATEGORY = VatCategory(EXEMPT, "Exempt from VAT", "VATEX-EU-132")

_WITHOUT_VAT = {
    "reverse_charge": REVERSE_CHARGE_CATEGORY,
    "zero_rated_export": EXPORT_CATEGORY,
    "exempt": EXEMPT_CATEGORY,
}


def vat_category(tax_reason: str | None, rate: Decimal) -> VatCategory:
    """standard or manual above 0 % (and no reason above 0 %): S; manual or no reason at
    0 %: Z; reverse_charge: AE; zero_rated_export: G; exempt: E. A reason that charges no
    VAT on a rate above 0 raises: the e-invoice would contradict the tax it states."""
    if tax_reason in _WITHOUT_VAT:
        if rate != 0:
            raise InconsistentTaxReason(f"{tax_reason} at {rate} %: no VAT may be charged")
        return _WITHOUT_VAT[tax_reason]
    if tax_reason not in (None, "standard", "manual"):
        raise ValueError(f"unknown tax reason: {tax_reason!r}")
    if rate > 0:
        return VatCategory(STANDARD)
    # A standard reason at 0 % is a zero-rated supply as well (a 0 % rate in a rate table).
    return VatCategory(ZERO_RATED)
