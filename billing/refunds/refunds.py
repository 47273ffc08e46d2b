"""Refunds: the same atomic phases and ledger as charges, for money going back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.adapters.stripe_gateway import RefundResult, StripeRejected, StripeUnavailable
from billing.charging.rules import ChargeStatus
from billing.documents import documents
from billing.domain.ledger import LedgerState
from billing.domain.money import AmountNotChargeable, UnknownCurrency, charge_step
from billing.events import events
from billing.events.rules import EventType
from billing.extensions import db
from billing.models import ChargeAttempt, Invoice, Refund
from billing.notifications import emails
from billing.platform import context, jobs, ledger
from billing.platform.errors import InvalidRequest, NotFound, TransientJobError, UnchargeableAmount
from billing.platform.ids import new_id
from billing.platform.ledger import Claim, ClaimResult
from billing.platform.logging import get_logger
from billing.platform.outbox import JobWork, has_unfinished_job, record_job, record_jobs
from billing.platform.unit_of_work import transaction
from billing.refunds import rules
from billing.refunds.rules import RefundStatus

log = get_logger(__name__)

LEDGER_SCOPE = "stripe.refund"


class RefundExceedsPayment(InvalidRequest):
    code = "refund_exceeds_payment"


@dataclass(frozen=True)
class RefundRequest:
    refund: Refund
    job_id: str


def request_refund(invoice_id: str, amount: int | None, reason: str | None) -> RefundRequest:
    """Record a refund of `amount` (everything refundable by default) and its job."""
    with transaction() as session:
        invoice = session.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)
        if invoice is None:
            raise NotFound(f"No such invoice: '{invoice_id}'", param="id")
        request = record_refund(session, invoice, amount, reason)
    log.info(
        "refund.requested",
        invoice_id=invoice_id,
        refund_id=request.refund.id,
        amount=request.refund.amount,
    )
    return request


def refundable(session: Session, invoice: Invoice) -> tuple[ChargeAttempt | None, int]:
    """The invoice's payment and what may still be refunded of it, `invoice` row-locked."""
    payment = session.scalars(
        select(ChargeAttempt).where(
            ChargeAttempt.invoice_id == invoice.id,
            ChargeAttempt.status == ChargeStatus.SUCCEEDED.value,
        )
    ).first()
    if payment is None or not payment.stripe_payment_intent_id:
        return None, 0
    # Refunds still on their way count as given back already: two quick requests
    # cannot together refund more than was paid.
    in_progress = session.scalar(
        select(func.coalesce(func.sum(Refund.amount), 0)).where(
            Refund.invoice_id == invoice.id, Refund.status.in_(rules.IN_PROGRESS)
        )
    )
    return payment, invoice.amount_paid - invoice.amount_refunded - int(in_progress or 0)


def record_refund(
    session: Session,
    invoice: Invoice,
    amount: int | None,
    reason: str | None,
    *,
    credit_note_id: str | None = None,
    param: str = "amount",
) -> RefundRequest:
    """The one way a refund is asked for, `invoice` row-locked by the caller, in its
    transaction: the refund row and its job, which sends it to Stripe exactly once."""
    payment, left = refundable(session, invoice)
    if payment is None:
        raise InvalidRequest("this invoice has no payment to refund", param="id")
    wanted = left if amount is None else amount
    if wanted <= 0:
        raise RefundExceedsPayment("nothing is left to refund on this invoice", param=param)
    if wanted > left:
        raise RefundExceedsPayment(f"at most {left} can be refunded on this invoice", param=param)
    step = charge_step(invoice.currency)
    if wanted % step:
        raise UnchargeableAmount(
            f"a refund in {invoice.currency.upper()} is a multiple of {step} (Stripe "
            "refunds it no finer)",
            param=param,
        )
    refund_id = new_id("rf")
    refund = Refund(
        id=refund_id,
        invoice_id=invoice.id,
        charge_attempt_id=payment.id,
        ledger_key=f"refund:{refund_id}",
        status=RefundStatus.PENDING.value,
        amount=wanted,
        currency=invoice.currency,
        reason=reason,
        credit_note_id=credit_note_id,
    )
    session.add(refund)
    job_id = record_job(session, jobs.REFUND_INVOICE, refund_id=refund_id)
    return RefundRequest(refund, job_id)


def _move(refund: Refund, target: RefundStatus) -> None:
    """Every change of a refund's status: what its state machine allows, or an error."""
    refund.status = rules.require_transition(refund.status, target).value


def execute_refund(refund_id: str, *, work: JobWork | None = None) -> str:
    """The `billing.refund_invoice` job."""
    with transaction() as session:
        refund = session.get(Refund, refund_id, with_for_update=True)
        if refund is None or refund.status in rules.FINAL:
            return refund.status if refund else "missing"
        payment = session.get(ChargeAttempt, refund.charge_attempt_id)
        assert payment is not None and payment.stripe_payment_intent_id
        claimed = ledger.claim_in_transaction(
            LEDGER_SCOPE, refund.ledger_key, refund.id, lease=context.stripe_call_lease()
        )
        if claimed.claim is Claim.DONE:
            return refund.status
        _move(refund, RefundStatus.STARTED)
        intent_id, amount, currency, ledger_key = (
            payment.stripe_payment_intent_id,
            refund.amount,
            refund.currency,
            refund.ledger_key,
        )
        invoice_id = refund.invoice_id
    gateway = (work or JobWork.outside_a_job()).gateways.stripe
    try:
        if claimed.claim is Claim.RESUMED:
            found = gateway.find_refunds_by_metadata(intent_id, "ledger_key", ledger_key)
            if found:
                return _record_success(refund_id, claimed, found[0])
        result = gateway.create_refund(
            payment_intent_id=intent_id,
            amount=amount,
            currency=currency,
            metadata={"invoice_id": invoice_id, "refund_id": refund_id, "ledger_key": ledger_key},
            idempotency_key=ledger_key,
        )
    except StripeRejected as exc:
        return _record_failure(refund_id, claimed, exc.message)
    except (AmountNotChargeable, UnknownCurrency) as exc:
        # Nothing was sent: an amount or currency recorded before Stripe's rules applied.
        return _record_failure(refund_id, claimed, str(exc))
    except StripeUnavailable as exc:
        with transaction() as session:
            if ledger.mark_unknown(claimed, {"error": str(exc)[:500]}, commit=False):
                refund = session.get(Refund, refund_id, with_for_update=True)
                assert refund is not None
                _move(refund, RefundStatus.UNKNOWN)
        raise TransientJobError(f"Stripe's answer to refund {refund_id} was lost: {exc}") from exc
    return _record_success(refund_id, claimed, result)


def _record_success(refund_id: str, claimed: ClaimResult, result: RefundResult) -> str:
    try:
        with transaction() as session:
            refund = session.get(Refund, refund_id, with_for_update=True)
            assert refund is not None
            invoice = session.get(Invoice, refund.invoice_id, with_for_update=True)
            assert invoice is not None
            # The fencing token first: a run that was taken over (and maybe finished by
            # its successor) must learn so before its refund is asked to change.
            ledger.complete(claimed, LedgerState.SUCCEEDED, outcome={"refund": result.id})
            _move(refund, RefundStatus.SUCCEEDED)
            refund.stripe_refund_id = result.id
            refund.finished_at = func.now()
            session.flush()
            # Never "add": Stripe's charge.refunded webhook may have counted this refund
            # already. The invoice shows the larger of what our refunds add up to and what
            # Stripe last reported; both only grow, neither counts a refund twice.
            ours = session.scalar(
                select(func.coalesce(func.sum(Refund.amount), 0)).where(
                    Refund.invoice_id == invoice.id,
                    Refund.status == RefundStatus.SUCCEEDED.value,
                )
            )
            invoice.amount_refunded = min(
                invoice.amount_paid, max(invoice.amount_refunded, int(ours or 0))
            )
            emails.queue_email(session, "refund_issued", invoice, occasion=refund_id)
            documents.request_render(session, invoice)  # the document shows the refund
            events.record(session, EventType.REFUND_SUCCEEDED, refund.id, invoice.customer_id)
    except ledger.LeaseLost as exc:
        raise TransientJobError(f"refund {refund_id} was taken over") from exc
    log.info("refund.succeeded", refund_id=refund_id, stripe_refund_id=result.id)
    return RefundStatus.SUCCEEDED.value


def _record_failure(refund_id: str, claimed: ClaimResult, message: str) -> str:
    try:
        with transaction() as session:
            refund = session.get(Refund, refund_id, with_for_update=True)
            assert refund is not None
            ledger.complete(claimed, LedgerState.FAILED, outcome={"error": message})
            _move(refund, RefundStatus.FAILED)
            refund.failure_message = message
            refund.finished_at = func.now()
            customer_id = session.scalar(
                select(Invoice.customer_id).where(Invoice.id == refund.invoice_id)
            )
            events.record(session, EventType.REFUND_FAILED, refund.id, customer_id)
    except ledger.LeaseLost as exc:
        raise TransientJobError(f"refund {refund_id} was taken over") from exc
    log.error("refund.failed", refund_id=refund_id, error=message)
    return RefundStatus.FAILED.value


def refunds_of(invoice_id: str) -> list[Refund]:
    return list(
        db.session.scalars(
            select(Refund).where(Refund.invoice_id == invoice_id).order_by(Refund.id)
        )
    )


RECONCILE_AFTER = timedelta(minutes=2)


def reconcile_stuck_refunds(limit: int = 200) -> int:
    """Beat's safety net for refunds, as for charges: a refund left pending, started or
    unknown with no unfinished job gets a new one (which reconciles first)."""
    with transaction() as session:
        unfinished_job = has_unfinished_job(jobs.REFUND_INVOICE, "refund_id", Refund.id)
        stuck = list(
            session.scalars(
                select(Refund.id)
                .where(
                    Refund.status.in_(rules.IN_PROGRESS),
                    Refund.updated_at < func.now() - RECONCILE_AFTER,
                    ~unfinished_job,
                )
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        record_jobs(session, jobs.REFUND_INVOICE, [{"refund_id": r} for r in stuck])
    if stuck:
        log.warning("refund.reconcile_sweep", refunds=len(stuck))
    return len(stuck)
