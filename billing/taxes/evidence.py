"""The VIES check of a reverse-charged invoice's buyer, kept as the invoice's evidence.

Finalization records a job for each reverse-charged invoice when VIES_URL is set, rather
than asking VIES itself: finalization runs in a transaction (a billing run's chunk, an
API request's), and no transaction is held open across a network call. The job asks VIES
outside any transaction and stores its answer in `invoices.tax_evidence`.

VIES down: the invoice stays finalized (reverse charge was decided on a VAT id whose format
and check digits were checked) with evidence `{"status": "unavailable"}`, and the job
tries again later, replacing it with VIES's answer once there is one. VIES saying the id
is invalid is kept as evidence too (`"status": "invalid"`), and logged for the seller to
correct with a credit note: an issued invoice is never edited.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.adapters.vies import ViesClient, ViesUnavailable
from billing.extensions import db
from billing.models import Customer, Invoice, InvoiceLine
from billing.platform import clock, context, jobs
from billing.platform.errors import TransientJobError
from billing.platform.logging import get_logger
from billing.platform.outbox import JobWork, record_jobs
from billing.platform.unit_of_work import transaction
from billing.taxes.rules import TaxIdType, TaxReason, vat_number_parts

log = get_logger(__name__)


def request_checks(session: Session, invoice_ids: list[str]) -> None:
    """In the finalization's transaction: a VIES check of each reverse-charged invoice
    among `invoice_ids`, when VIES is enabled."""
    if not context.settings().vies_url or not invoice_ids:
        return
    reverse_charged = session.scalars(
        select(InvoiceLine.invoice_id)
        .where(
            InvoiceLine.invoice_id == func.any(invoice_ids),
            InvoiceLine.tax_reason == TaxReason.REVERSE_CHARGE.value,
        )
        .distinct()
    ).all()
    record_jobs(session, jobs.CHECK_VAT_EVIDENCE, [{"invoice_id": i} for i in reverse_charged])


def check_vat_evidence(invoice_id: str, *, work: JobWork | None = None) -> dict[str, Any]:
    """Ask VIES about the invoice's buyer and keep the answer on the invoice."""
    settings = context.settings()
    row = db.session.execute(
        select(Customer.tax_id, Customer.tax_id_type)
        .join(Invoice, Invoice.customer_id == Customer.id)
        .where(Invoice.id == invoice_id)
    ).one_or_none()
    db.session.commit()  # never hold a transaction open across the network call
    if row is None or not settings.vies_url:
        return {}
    if row.tax_id is None or row.tax_id_type != TaxIdType.EU_VAT:
        evidence: dict[str, Any] = {"status": "no_vat_id"}
    else:
        country_code, vat_number = vat_number_parts(row.tax_id)
        client = ViesClient(settings.vies_url, settings.vies_timeout_seconds)
        try:
            evidence = client.check_vat_number(country_code, vat_number).as_evidence()
        except ViesUnavailable as exc:
            evidence = {"status": "unavailable", "error": str(exc)[:500]}
        evidence |= {"countryCode": country_code, "vatNumber": vat_number}
    evidence["checked_at"] = clock.now().isoformat()
    with transaction() as session:
        invoice = session.get(Invoice, invoice_id, with_for_update=True)
        assert invoice is not None
        invoice.tax_evidence = evidence
    log.info("invoice.tax_evidence", invoice_id=invoice_id, status=evidence["status"])
    if evidence["status"] == "unavailable":
        raise TransientJobError(f"VIES unavailable for invoice {invoice_id}")
    if evidence["status"] == "invalid":
        log.warning("invoice.reverse_charge_vat_id_invalid", invoice_id=invoice_id)
    return evidence
