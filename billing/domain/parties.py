"""The parties of an invoice: the seller's block and the buyer's, as plain JSON objects.

An issued invoice keeps both as they stood when it was finalized (`invoices.seller_party`
and `buyer_party`): what it says about who sold to whom must not change when the customer
moves or the company renames itself. A draft, and an invoice finalized before these were
kept, has none and shows the current values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from billing.config import Settings

# The buyer's snapshot: these keys, from the customer's columns of the same names.
BUYER_KEYS = ("name", "email", "address", "tax_id", "tax_id_type")


def seller_party(
    name: str,
    address_lines: Sequence[str],
    tax_id: str | None,
    email: str | None,
    postal_address: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The seller's block. The logo and the payment instructions are not part of it: they
    say how to pay today, not who issued the invoice. `postal_address` (the address in
    parts an e-invoice needs) is kept only when configured."""
    party: dict[str, Any] = {
        "name": name,
        "address_lines": list(address_lines),
        "tax_id": tax_id,
        "email": email,
    }
    if postal_address:
        party["postal_address"] = dict(postal_address)
    return party


def seller_postal_address(
    street: str | None, city: str | None, postal_code: str | None, country: str | None
) -> dict[str, Any] | None:
    """The seller's address in parts, or None when none of them is configured."""
    parts = {"street": street, "city": city, "postal_code": postal_code, "country": country}
    return parts if any(parts.values()) else None


def configured_seller(settings: Settings) -> dict[str, Any]:
    """The seller's block as the settings (SELLER_*) give it now."""
    return seller_party(
        settings.seller_name,
        settings.seller_address,
        settings.seller_tax_id,
        settings.seller_email,
        seller_postal_address(
            settings.seller_street,
            settings.seller_city,
            settings.seller_postal_code,
            settings.seller_country,
        ),
    )


def buyer_party(
    name: str,
    email: str | None,
    address: Mapping[str, Any] | None,
    tax_id: str | None,
    tax_id_type: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "email": email,
        "address": dict(address) if address is not None else None,
        "tax_id": tax_id,
        # Which scheme the id is in (a VAT id, or an EIN that no e-invoice calls a VAT id).
        "tax_id_type": tax_id_type,
    }


def shown(snapshot: Mapping[str, Any] | None, current: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a document or an email shows of a party: the invoice's snapshot when it has
    one, else the current values."""
    return snapshot if isinstance(snapshot, Mapping) else current
