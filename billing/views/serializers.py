"""Shaping models into API responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Response, jsonify

from billing.charging.rules import ChargeStatus
from billing.credit_notes.credit_notes import Preview
from billing.credit_notes.rules import CreditLine, Settlement
from billing.domain.jobs import JobState
from billing.dunning.rules import DunningStep
from billing.events import events
from billing.extensions import db
from billing.hosted import urls
from billing.invoicing.invoices import (
    InvoiceHistory,
    ShownAttempt,
    ShownInvoice,
    ShownLine,
    invoice_histories,
)
from billing.models import (
    ChargeAttempt,
    Coupon,
    CreditNote,
    Customer,
    CustomerBalanceTransaction,
    Discount,
    EmailDelivery,
    Invoice,
    InvoiceDocument,
    OutboxJob,
    Price,
    PromotionCode,
    Refund,
    Subscription,
    TaxRate,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing.platform import clock
from billing.views import schemas


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def customer_out(customer: Customer, *, sync_job: str | None = None) -> schemas.CustomerOut:
    return schemas.CustomerOut(
        id=customer.id,
        name=customer.name,
        email=customer.email,
        currency=customer.currency,
        address=schemas.Address.model_validate(customer.address) if customer.address else None,
        tax_id=customer.tax_id,
        tax_id_type=customer.tax_id_type,  # type: ignore[arg-type]
        tax_status=customer.tax_status,  # type: ignore[arg-type]
        metadata=customer.metadata_,
        locale=customer.locale,
        billing_emails=list(customer.billing_emails or []),
        stripe_customer_id=customer.stripe_customer_id,
        default_payment_method=customer.default_payment_method,
        balance=customer.balance,
        delinquent=customer.delinquent,
        created=_ts(customer.created_at) or 0,
        sync_job=sync_job,
    )


def charge_attempt_out(attempt: ChargeAttempt | ShownAttempt) -> schemas.ChargeAttemptOut:
    return schemas.ChargeAttemptOut(**_attempt_fields(attempt))


def _attempt_fields(attempt: ChargeAttempt | ShownAttempt) -> dict[str, Any]:
    # What the customer needs to authenticate, shown only while it is needed.
    waiting = attempt.status == ChargeStatus.REQUIRES_ACTION
    return {
        "id": attempt.id,
        "invoice": attempt.invoice_id,
        "status": attempt.status,
        "source": attempt.source,
        "amount": attempt.amount,
        "currency": attempt.currency,
        "payment_method": attempt.payment_method,
        "payment_intent": attempt.stripe_payment_intent_id,
        "decline_code": attempt.decline_code,
        "failure_message": attempt.failure_message,
        "next_action": attempt.next_action if waiting else None,
        "client_secret": attempt.client_secret if waiting else None,
        "created": _ts(attempt.created_at) or 0,
        "finished_at": _ts(attempt.finished_at),
    }


def pay_response(attempt: ChargeAttempt, job_id: str | None, created: bool) -> schemas.PayResponse:
    return schemas.PayResponse(**_attempt_fields(attempt), job=job_id, created_now=created)


def refund_out(refund: Refund, *, job_id: str | None = None) -> schemas.RefundOut:
    return schemas.RefundOut(
        id=refund.id,
        invoice=refund.invoice_id,
        status=refund.status,  # type: ignore[arg-type]
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        stripe_refund_id=refund.stripe_refund_id,
        failure_message=refund.failure_message,
        created=_ts(refund.created_at) or 0,
        job=job_id,
    )


def email_out(delivery: EmailDelivery) -> schemas.EmailOut:
    return schemas.EmailOut(
        id=delivery.id,
        kind=delivery.kind,
        recipient=delivery.recipient,
        status=delivery.status,  # type: ignore[arg-type]
        error=delivery.error,
        attempts=delivery.attempts,
        message_id=delivery.message_id,
        created=_ts(delivery.created_at) or 0,
        sent_at=_ts(delivery.sent_at),
    )


def document_out(document: InvoiceDocument) -> schemas.DocumentOut:
    return schemas.DocumentOut(
        version=document.version,
        invoice_status=document.invoice_status,
        sha256=document.sha256,
        size=document.size,
        template_version=document.template_version,
        renderer_version=document.renderer_version,
        created=_ts(document.created_at) or 0,
        url=f"/v1/invoices/{document.invoice_id}/pdf",
    )


def _line_body(line: ShownLine, rate: str) -> dict[str, Any]:
    return {
        "id": line.id,
        "object": "line_item",
        "description": line.description,
        "quantity": line.quantity,
        "unit_amount": line.unit_amount,
        "tax_rate": rate,
        "amount": line.amount,
        "discount_amount": line.discount_amount,
        "tax": line.tax,
        "tax_rate_id": line.tax_rate_id,
        "tax_reason": line.tax_reason,
        "tax_inclusive": line.tax_inclusive,
    }


def invoice_body(invoice: ShownInvoice, history: InvoiceHistory) -> dict[str, Any]:
    """The invoice as `schemas.InvoiceOut` dumps it to JSON, built straight from the rows:
    a page of a hundred is shown without validating a thousand models made from values
    the database already checked. tests/integration/test_invoice_reads.py holds it to the
    schema; `invoice_out` validates it."""
    lines = []
    by_rate: dict[str, dict[str, Any]] = {}
    for line in invoice.lines:
        key = str(line.tax_rate)
        entry = by_rate.get(key)
        if entry is None:
            entry = by_rate[key] = {
                "tax_rate": schemas.tax_rate_text(line.tax_rate),
                "taxable_amount": 0,
                "amount": 0,
            }
        entry["taxable_amount"] += line.amount - line.discount_amount
        entry["amount"] += line.tax
        lines.append(_line_body(line, entry["tax_rate"]))
    document = history.document
    return {
        "id": invoice.id,
        "object": "invoice",
        "customer": invoice.customer_id,
        "number": invoice.number,
        "status": invoice.status,
        "currency": invoice.currency,
        "collection_method": invoice.collection_method,
        "days_until_due": invoice.days_until_due,
        "due_date": invoice.due_date.isoformat() if invoice.due_date is not None else None,
        "description": invoice.description,
        "buyer_reference": invoice.buyer_reference,
        "metadata": invoice.metadata_,
        "lines": {"object": "list", "data": lines},
        "subtotal": invoice.subtotal,
        "discount": invoice.discount,
        "discounts": invoice.discounts,
        "tax": invoice.tax,
        "total": invoice.total,
        "total_tax_amounts": list(by_rate.values()),
        "balance_applied": invoice.balance_applied,
        "amount_credited": invoice.amount_credited,
        "credit_notes_total": invoice.credit_notes_total,
        "amount_paid": invoice.amount_paid,
        "amount_due": invoice.amount_due,
        "amount_refunded": invoice.amount_refunded,
        # Few invoices have any of these: their own models shape them.
        "refunds": [refund_out(r).model_dump(mode="json") for r in history.refunds],
        "payment_attempts": [
            charge_attempt_out(a).model_dump(mode="json") for a in invoice.charge_attempts
        ],
        "next_payment_attempt": _ts(history.next_payment_attempt),
        "emails": [email_out(e).model_dump(mode="json") for e in history.emails],
        "document": document_out(document).model_dump(mode="json") if document else None,
        "created": _ts(invoice.created_at) or 0,
        "finalized_at": _ts(invoice.finalized_at),
        "paid_at": _ts(invoice.paid_at),
        "voided_at": _ts(invoice.voided_at),
        "marked_uncollectible_at": _ts(invoice.marked_uncollectible_at),
        "tax_evidence": invoice.tax_evidence,
        "hosted_invoice_url": urls.hosted_url(invoice.number, urls.closed_at(invoice)),
    }


def invoice_out(
    invoice: Invoice | ShownInvoice, *, just_finalized: bool = False
) -> schemas.InvoiceOut:
    """The invoice after a change (its model, or its rows as a change already read them),
    its history read here. `just_finalized`: the invoice was numbered by this very request,
    so no email and no document of it can exist yet: two queries the hottest request can
    skip."""
    shown = invoice if isinstance(invoice, ShownInvoice) else ShownInvoice.of(invoice)
    history = invoice_histories([shown], just_finalized=just_finalized)[invoice.id]
    body = invoice_body(shown, history)
    # A response is shaped last, from the change's own transaction: the invoice's event
    # of this change shows the same body rather than reading the invoice once more.
    events.offer_snapshot(db.session(), "invoice", invoice.id, body)
    return schemas.InvoiceOut.model_validate(body)


def invoice_response(invoice: ShownInvoice) -> Response:
    """GET of one invoice: its JSON body as is."""
    return jsonify(invoice_body(invoice, invoice_histories([invoice])[invoice.id]))


def invoice_list_response(invoices: list[ShownInvoice], *, has_more: bool) -> Response:
    """GET of a page of invoices, their histories read for the whole page at once."""
    histories = invoice_histories(invoices)
    return jsonify(
        {
            "object": "list",
            "data": [invoice_body(i, histories[i.id]) for i in invoices],
            "has_more": has_more,
        }
    )


def _job_error_code(job: OutboxJob) -> Literal["retrying", "failed", "dead_lettered"] | None:
    if job.state == JobState.FAILED:
        return "failed"
    if job.state == JobState.DEAD_LETTERED:
        return "dead_lettered"
    if job.last_error and job.state != JobState.SUCCEEDED:
        return "retrying"
    return None


def job_out(job: OutboxJob, *, error_detail: bool) -> schemas.JobOut:
    """`error_detail`: the recorded error text, which may name hosts, addresses and other
    customers' ids; an admin key's to read, never a customer key's."""
    return schemas.JobOut(
        id=job.id,
        name=job.name,
        queue=job.queue,
        state=job.state,  # type: ignore[arg-type]
        attempts=job.attempts,
        error_code=_job_error_code(job),
        last_error=job.last_error if error_detail else None,
        args=job.args,
        request_id=job.request_id,
        created=_ts(job.created_at) or 0,
        sent_at=_ts(job.sent_at),
        started_at=_ts(job.started_at),
        finished_at=_ts(job.finished_at),
    )


def price_out(price: Price) -> schemas.PriceOut:
    return schemas.PriceOut(
        id=price.id,
        product=price.product,
        unit_amount=price.unit_amount,
        currency=price.currency,
        interval=price.interval,  # type: ignore[arg-type]
        tax_category=price.tax_category,  # type: ignore[arg-type]
        created=_ts(price.created_at) or 0,
    )


def tax_rate_out(rate: TaxRate) -> schemas.TaxRateOut:
    return schemas.TaxRateOut(
        id=rate.id,
        display_name=rate.display_name,
        percentage=rate.percentage,
        inclusive=rate.inclusive,
        country=rate.country,
        region=rate.region,
        tax_category=rate.tax_category,  # type: ignore[arg-type]
        active=rate.active,
        created=_ts(rate.created_at) or 0,
    )


def subscription_out(subscription: Subscription) -> schemas.SubscriptionOut:
    return schemas.SubscriptionOut(
        id=subscription.id,
        customer=subscription.customer_id,
        price=price_out(subscription.price),
        quantity=subscription.quantity,
        status=subscription.status,  # type: ignore[arg-type]
        collection_method=subscription.collection_method,  # type: ignore[arg-type]
        days_until_due=subscription.days_until_due,
        billing_cycle_anchor=_ts(subscription.billing_cycle_anchor) or 0,
        current_period_start=_ts(subscription.current_period_start) or 0,
        current_period_end=_ts(subscription.current_period_end) or 0,
        cancel_at_period_end=subscription.cancel_at_period_end,
        canceled_at=_ts(subscription.canceled_at),
        ended_at=_ts(subscription.ended_at),
        latest_invoice=subscription.latest_invoice_id,
        trial_start=_ts(subscription.trial_start),
        trial_end=_ts(subscription.trial_end),
        created=_ts(subscription.created_at) or 0,
    )


def dunning_preview_out(invoice_id: str, steps: list[DunningStep]) -> schemas.DunningPreview:
    return schemas.DunningPreview(
        invoice=invoice_id,
        steps=[
            schemas.DunningStepOut(
                date=step.on,
                action=step.action.value,
                reason=step.reason,
                status=step.status.value,
                step=step.key,
            )
            for step in steps
        ],
    )


def webhook_endpoint_out(
    endpoint: WebhookEndpoint, *, secret: str | None = None
) -> schemas.WebhookEndpointOut:
    return schemas.WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        enabled_events=list(endpoint.event_types),
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        created=_ts(endpoint.created_at) or 0,
        secret=secret,
    )


def webhook_delivery_out(
    delivery: WebhookDelivery, attempts: list[WebhookAttempt]
) -> schemas.WebhookDeliveryOut:
    return schemas.WebhookDeliveryOut(
        id=delivery.id,
        endpoint=delivery.endpoint_id,
        event=delivery.event_id,
        event_sequence=delivery.sequence,
        state=delivery.state,  # type: ignore[arg-type]
        attempts=[
            schemas.WebhookAttemptOut(
                outcome=a.outcome,  # type: ignore[arg-type]
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
                response_excerpt=a.response_excerpt,
                created=_ts(a.created_at) or 0,
            )
            for a in attempts
        ],
        next_attempt=_ts(delivery.next_attempt_at),
        created=_ts(delivery.created_at) or 0,
        finished_at=_ts(delivery.finished_at),
    )


def _tax_amounts(lines: list[Any]) -> list[schemas.TaxAmount]:
    by_rate: dict[Any, schemas.TaxAmount] = {}
    for line in lines:
        entry = by_rate.setdefault(
            line.tax_rate, schemas.TaxAmount(tax_rate=line.tax_rate, taxable_amount=0, amount=0)
        )
        entry.taxable_amount += line.amount
        entry.amount += line.tax
    return list(by_rate.values())


def _credit_line_out(line: Any) -> schemas.CreditNoteLineOut:
    return schemas.CreditNoteLineOut(
        id=getattr(line, "id", None),
        invoice_line=line.invoice_line_id,
        description=line.description,
        quantity=line.quantity,
        tax_rate=line.tax_rate,
        amount=line.amount,
        tax=line.tax,
    )


def credit_note_out(note: CreditNote) -> schemas.CreditNoteOut:
    return schemas.CreditNoteOut(
        id=note.id,
        number=note.number,
        invoice=note.invoice_id,
        customer=note.customer_id,
        currency=note.currency,
        status=note.status,  # type: ignore[arg-type]
        reason=note.reason,  # type: ignore[arg-type]
        memo=note.memo,
        lines=[_credit_line_out(line) for line in note.lines],
        subtotal=note.subtotal,
        tax=note.tax,
        total=note.total,
        total_tax_amounts=_tax_amounts(list(note.lines)),
        settlement=schemas.SettlementOut(
            amount_due=note.amount_due_reduction,
            refund=note.refund_amount,
            credit_balance=note.credit_balance_amount,
            out_of_band=note.out_of_band_amount,
        ),
        refund=note.refund.id if note.refund is not None else None,
        metadata=note.metadata_,
        created=_ts(note.issued_at),
        voided_at=_ts(note.voided_at),
    )


def credit_note_preview_out(
    preview: Preview, reason: str, memo: str | None
) -> schemas.CreditNoteOut:
    computation = preview.computation
    lines: list[CreditLine] = computation.lines
    return schemas.CreditNoteOut(
        id=None,
        number=None,
        invoice=preview.invoice.id,
        customer=preview.invoice.customer_id,
        currency=preview.invoice.currency,
        status=None,
        reason=reason,  # type: ignore[arg-type]
        memo=memo,
        lines=[_credit_line_out(line) for line in lines],
        subtotal=computation.subtotal,
        tax=computation.tax,
        total=computation.total,
        total_tax_amounts=_tax_amounts(list(lines)),
        settlement=schemas.SettlementOut(
            amount_due=preview.settlement.get(Settlement.AMOUNT_DUE, 0),
            refund=preview.settlement.get(Settlement.REFUND, 0),
            credit_balance=preview.settlement.get(Settlement.CREDIT_BALANCE, 0),
            out_of_band=preview.settlement.get(Settlement.OUT_OF_BAND, 0),
        ),
        metadata={},
        created=None,
        voided_at=None,
    )


def balance_transaction_out(entry: CustomerBalanceTransaction) -> schemas.BalanceTransactionOut:
    return schemas.BalanceTransactionOut(
        id=entry.id,
        customer=entry.customer_id,
        type=entry.type,  # type: ignore[arg-type]
        amount=entry.amount,
        currency=entry.currency,
        balance_after=entry.balance_after,
        credit_note=entry.credit_note_id,
        invoice=entry.invoice_id,
        description=entry.description,
        created=_ts(entry.created_at) or 0,
    )


def coupon_out(coupon: Coupon) -> schemas.CouponOut:
    exhausted = (
        coupon.max_redemptions is not None and coupon.times_redeemed >= coupon.max_redemptions
    )
    expired = coupon.redeem_by is not None and coupon.redeem_by < clock.now()
    return schemas.CouponOut(
        id=coupon.id,
        name=coupon.name,
        percent_off=coupon.percent_off,
        amount_off=coupon.amount_off,
        currency=coupon.currency,
        duration=coupon.duration,  # type: ignore[arg-type]
        duration_in_months=coupon.duration_in_months,
        max_redemptions=coupon.max_redemptions,
        redeem_by=_ts(coupon.redeem_by),
        times_redeemed=coupon.times_redeemed,
        valid=coupon.deleted_at is None and not exhausted and not expired,
        metadata=coupon.metadata_,
        created=_ts(coupon.created_at) or 0,
    )


def promotion_code_out(promotion_code: PromotionCode, coupon: Coupon) -> schemas.PromotionCodeOut:
    return schemas.PromotionCodeOut(
        id=promotion_code.id,
        code=promotion_code.code,
        coupon=coupon_out(coupon),
        active=promotion_code.active,
        customer=promotion_code.customer_id,
        max_redemptions=promotion_code.max_redemptions,
        expires_at=_ts(promotion_code.expires_at),
        times_redeemed=promotion_code.times_redeemed,
        created=_ts(promotion_code.created_at) or 0,
    )


def discount_out(discount: Discount, coupon: Coupon) -> schemas.DiscountOut:
    return schemas.DiscountOut(
        id=discount.id,
        coupon=coupon_out(coupon),
        promotion_code=discount.promotion_code_id,
        customer=discount.customer_id,
        subscription=discount.subscription_id,
        invoice=discount.invoice_id,
        start=_ts(discount.start) or 0,
        end=_ts(discount.end),
        ended_at=_ts(discount.ended_at),
        created=_ts(discount.created_at) or 0,
    )
