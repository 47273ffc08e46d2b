"""VIES, the EU's service that confirms a VAT id, through its REST API:
``POST {VIES_URL}`` with ``{"countryCode": "DE", "vatNumber": "123456789"}``, answered
``{"valid": true, "name": ..., "address": ..., "requestDate": ...}`` (the shape of
https://ec.europa.eu/taxation_customs/vies/rest-api/check-vat-number).

VIES is often slow or down (each member state's own service behind it may be): any error,
timeout or answer we cannot read is `ViesUnavailable`, never a crash of the caller.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class ViesUnavailable(Exception):
    pass


@dataclass(frozen=True)
class ViesAnswer:
    valid: bool
    name: str | None
    address: str | None
    request_date: str | None

    def as_evidence(self) -> dict[str, Any]:
        return {
            "status": "valid" if self.valid else "invalid",
            "valid": self.valid,
            "name": self.name,
            "address": self.address,
            "requestDate": self.request_date,
        }


@dataclass(frozen=True)
class ViesClient:
    url: str
    timeout: float

    def check_vat_number(self, country_code: str, vat_number: str) -> ViesAnswer:
        body = json.dumps({"countryCode": country_code, "vatNumber": vat_number}).encode()
        request = urllib.request.Request(  # noqa: S310 (the operator's VIES_URL)
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise ViesUnavailable(str(exc)) from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("valid"), bool):
            # VIES answers errors (a member state's service down: MS_UNAVAILABLE) with
            # 200 and no verdict.
            raise ViesUnavailable(f"no verdict in VIES's answer: {str(answer)[:200]}")
        return ViesAnswer(
            valid=answer["valid"],
            name=answer.get("name"),
            address=answer.get("address"),
            request_date=answer.get("requestDate"),
        )
