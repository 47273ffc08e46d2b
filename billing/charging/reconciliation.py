"""Our ledger against Stripe's own PaymentIntents over a time range.

Stripe is asked for every PaymentIntent created in [since, until); those carrying our
metadata (`invoice_id`, written by the charge path) are grouped by invoice and compared
with what PostgreSQL records. Four kinds of finding:

- `duplicate_charge`: an invoice with more than one succeeded PaymentIntent (counting the
  payment we record for it, even when it was made before the range). Resolved once every
  PaymentIntent but one is fully refunded. Never refunded here: an operator decides.
- `missing_payment`: a succeeded PaymentIntent for an invoice on which we record no
  successful payment: money arrived and we do not know it.
- `unknown_attempt`: one of our charge attempts (created in the range) whose outcome is
  still unknown, with what Stripe says about it.
- `unmatched_payment`: a succeeded PaymentIntent naming an invoice we do not have.

PaymentIntents without our metadata (another integration on the same account) are counted
and otherwise ignored.

`fix=True` adopts Stripe's truth for missing payments and unknown attempts through the
same path as a webhook (`charges.apply_intent_from_stripe`: the attempt's ledger entry, its
fencing token, never backwards). It never creates a PaymentIntent and never refunds one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from billing.adapters.stripe_gateway import (
    ListedPaymentIntent,
    PaymentIntentResult,
    StripeRateLimited,
    StripeUnavailable,
)
from billing.charging import charges
from billing.charging import rules as charge_rules
from billing.charging.rules import ChargeStatus
from billing.extensions import db
from billing.models import ChargeAttempt, Invoice
from billing.platform import context
from billing.platform.logging import get_logger
from billing.platform.metrics import DUPLICATE_CHARGES

log = get_logger(__name__)

DUPLICATE = "duplicate_charge"
MISSING = "missing_payment"
UNKNOWN = "unknown_attempt"
UNMATCHED = "unmatched_payment"
KINDS = (DUPLICATE, MISSING, UNKNOWN, UNMATCHED)

# The nightly run looks two days back: each night overlaps the one before, so a night
# missed (beat down, Stripe unreachable) loses nothing.
NIGHTLY_WINDOW = timedelta(hours=48)
# Invoices looked up per query: two days of payments can be tens of thousands.
ID_BATCH = 1000


@dataclass(frozen=True)
class IntentSummary:
    id: str
    status: str
    amount: int
    amount_refunded: int
    recorded: bool  # the payment we record for the invoice

    @property
    def unrefunded(self) -> int:
        return max(self.amount - self.amount_refunded, 0)


@dataclass
class Finding:
    kind: str
    invoice_id: str | None
    attempt_id: str | None
    currency: str
    amount: int  # at stake: the money to give back, the payment we miss, the attempt's amount
    detail: str
    payment_intents: list[IntentSummary] = field(default_factory=list)
    resolved: bool = False
    resolution: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReconcileReport:
    since: datetime
    until: datetime
    intents_seen: int
    intents_without_our_metadata: int
    findings: list[Finding]
    fixed: bool

    @property
    def open_findings(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.resolved]

    @property
    def clean(self) -> bool:
        return not self.open_findings

    def count(self, kind: str, *, open_only: bool = True) -> int:
        found = self.open_findings if open_only else self.findings
        return sum(1 for finding in found if finding.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "intents_seen": self.intents_seen,
            "intents_without_our_metadata": self.intents_without_our_metadata,
            "fixed": self.fixed,
            "clean": self.clean,
            "open": {kind: self.count(kind) for kind in KINDS},
            "findings": [finding.as_dict() for finding in self.findings],
        }


def _seconds_range(since: datetime, until: datetime) -> tuple[int, int]:
    """Stripe's `created` is in whole seconds: a second partly inside the range counts,
    so that a PaymentIntent created in the last moment before `until` is not missed."""
    return math.floor(since.timestamp()), math.ceil(until.timestamp())


def reconcile(since: datetime, until: datetime, *, fix: bool = False) -> ReconcileReport:
    """Compare; with `fix`, adopt Stripe's truth where that is safe. Raises StripeUnavailable
    when Stripe cannot be listed: then nothing was concluded."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    created_from, created_until = _seconds_range(since, until)
    intents = list(
        context.stripe_gateway().list_payment_intents(
            created_from=created_from, created_until=created_until
        )
    )
    ours = [intent for intent in intents if intent.metadata.get("invoice_id")]
    findings = _payment_findings(ours)
    findings += _unknown_attempt_findings(since, until, ours, findings)
    if fix:
        for finding in findings:
            _fix(finding)
        db.session.commit()
    report = ReconcileReport(
        since=since,
        until=until,
        intents_seen=len(intents),
        intents_without_our_metadata=len(intents) - len(ours),
        findings=findings,
        fixed=fix,
    )
    log.info(
        "reconcile.finished",
        since=since.isoformat(),
        until=until.isoformat(),
        intents=len(intents),
        fixed=fix,
        **{kind: report.count(kind) for kind in KINDS},
    )
    return report


def _payment_findings(ours: list[ListedPaymentIntent]) -> list[Finding]:
    paid: dict[str, list[ListedPaymentIntent]] = defaultdict(list)
    for intent in sorted(ours, key=lambda i: (i.created, i.id)):
        if intent.status == "succeeded":
            paid[intent.metadata["invoice_id"]].append(intent)
    if not paid:
        return []
    session = db.session()
    invoices: dict[str, Invoice] = {}
    recorded: dict[str, ChargeAttempt] = {}
    ids = list(paid)
    for start in range(0, len(ids), ID_BATCH):
        batch = ids[start : start + ID_BATCH]
        invoices.update(
            (invoice.id, invoice)
            for invoice in session.scalars(select(Invoice).where(Invoice.id.in_(batch)))
        )
        recorded.update(
            (attempt.invoice_id, attempt)
            for attempt in session.scalars(
                select(ChargeAttempt).where(
                    ChargeAttempt.invoice_id.in_(batch),
                    ChargeAttempt.status == ChargeStatus.SUCCEEDED.value,
                )
            )
        )
    findings: list[Finding] = []
    for invoice_id, intents in paid.items():
        invoice = invoices.get(invoice_id)
        first = intents[0]
        if invoice is None:
            findings.append(
                Finding(
                    kind=UNMATCHED,
                    invoice_id=invoice_id,
                    attempt_id=first.metadata.get("attempt_id"),
                    currency=first.currency,
                    amount=sum(i.unrefunded for i in map(_summary, intents)),
                    detail="succeeded on Stripe for an invoice this database does not have "
                    "(another environment on the same Stripe account?)",
                    payment_intents=[_summary(i) for i in intents],
                )
            )
            continue
        payment = recorded.get(invoice_id)
        summaries = [_summary(i, recorded=payment) for i in intents]
        if payment is not None and payment.stripe_payment_intent_id not in {i.id for i in intents}:
            # Paid before the range: its refunds are not listed, so it counts as kept.
            summaries.insert(
                0,
                IntentSummary(
                    id=payment.stripe_payment_intent_id or "?",
                    status="succeeded",
                    amount=payment.amount,
                    amount_refunded=0,
                    recorded=True,
                ),
            )
        if len(summaries) > 1:
            # The payment we record first: the others are the ones to refund.
            summaries.sort(key=lambda summary: not summary.recorded)
            findings.append(_duplicate(invoice, summaries))
        if payment is None:
            attempt_id = charges.attempt_for_intent(first.id, first.metadata)
            detail = (
                f"{first.id} succeeded on Stripe but the invoice is {invoice.status} with no "
                "successful payment recorded"
            )
            if attempt_id is None:
                detail += "; no attempt of ours names it: refund it, or record it by hand"
            findings.append(
                Finding(
                    kind=MISSING,
                    invoice_id=invoice_id,
                    attempt_id=attempt_id,
                    currency=first.currency,
                    amount=first.amount,
                    detail=detail,
                    payment_intents=[_summary(first)],
                )
            )
    return findings


def _summary(intent: ListedPaymentIntent, recorded: ChargeAttempt | None = None) -> IntentSummary:
    return IntentSummary(
        id=intent.id,
        status=intent.status,
        amount=intent.amount,
        amount_refunded=intent.amount_refunded,
        recorded=recorded is not None and recorded.stripe_payment_intent_id == intent.id,
    )


def _duplicate(invoice: Invoice, summaries: list[IntentSummary]) -> Finding:
    kept = [s for s in summaries if s.unrefunded > 0]
    # What is to give back: everything kept beyond one payment (ours if it is kept).
    keep = next(
        (s for s in kept if s.recorded), max(kept, key=lambda s: s.unrefunded, default=None)
    )
    excess = sum(s.unrefunded for s in kept) - (keep.unrefunded if keep is not None else 0)
    refunded = len(kept) <= 1
    names = ", ".join(s.id for s in summaries)
    return Finding(
        kind=DUPLICATE,
        invoice_id=invoice.id,
        attempt_id=None,
        currency=invoice.currency,
        amount=excess,
        detail=f"{len(summaries)} succeeded PaymentIntents for one invoice ({names}); "
        + ("all but one refunded" if refunded else f"{excess} {invoice.currency} to refund"),
        payment_intents=summaries,
        resolved=refunded,
        resolution="refunded: one payment is kept" if refunded else None,
    )


def _unknown_attempt_findings(
    since: datetime, until: datetime, ours: list[ListedPaymentIntent], found: list[Finding]
) -> list[Finding]:
    covered = {finding.attempt_id for finding in found if finding.kind == MISSING}
    attempts = db.session.scalars(
        select(ChargeAttempt)
        .where(
            ChargeAttempt.status == ChargeStatus.UNKNOWN.value,
            ChargeAttempt.created_at >= since,
            ChargeAttempt.created_at < until,
        )
        .order_by(ChargeAttempt.created_at)
    ).all()
    findings: list[Finding] = []
    for attempt in attempts:
        if attempt.id in covered:
            continue
        intent = _stripe_view(attempt, ours)
        if intent is None:
            detail = (
                "Stripe has no PaymentIntent for it: its charge job sends it again with the "
                "same idempotency key (beat's reconcile-charges gives it one if it has none)"
            )
        else:
            detail = f"Stripe says {intent.id} is {intent.status}"
        findings.append(
            Finding(
                kind=UNKNOWN,
                invoice_id=attempt.invoice_id,
                attempt_id=attempt.id,
                currency=attempt.currency,
                amount=attempt.amount,
                detail=detail,
                payment_intents=(
                    [
                        IntentSummary(
                            id=intent.id or "?",
                            status=intent.status,
                            amount=intent.amount,
                            amount_refunded=0,
                            recorded=False,
                        )
                    ]
                    if intent is not None
                    else []
                ),
            )
        )
    return findings


def _stripe_view(
    attempt: ChargeAttempt, ours: list[ListedPaymentIntent]
) -> PaymentIntentResult | None:
    """What Stripe has for this attempt: from the listing when it is there, else asked the
    way the charge job asks (its intent's id, else our ledger key in metadata)."""
    for intent in ours:
        if intent.id == attempt.stripe_payment_intent_id or (
            intent.metadata.get("ledger_key") == attempt.ledger_key
        ):
            return PaymentIntentResult(
                id=intent.id, status=intent.status, amount=intent.amount, currency=intent.currency
            )
    return charges.find_intent_for_attempt(
        context.stripe_gateway(), attempt.stripe_payment_intent_id, attempt.ledger_key
    )


def _fix(finding: Finding) -> None:
    if finding.resolved or finding.attempt_id is None:
        return
    if finding.kind == MISSING:
        [intent] = finding.payment_intents
        adopted = PaymentIntentResult(
            id=intent.id, status="succeeded", amount=intent.amount, currency=finding.currency
        )
    elif finding.kind == UNKNOWN and finding.payment_intents:
        # Asked again: the listing may be a while old, and the intent may have moved on.
        adopted = context.stripe_gateway().retrieve_payment_intent(finding.payment_intents[0].id)
    else:
        return
    outcome = charges.apply_intent_from_stripe(finding.attempt_id, adopted)
    db.session.commit()
    attempt = db.session.get(ChargeAttempt, finding.attempt_id, populate_existing=True)
    status = attempt.status if attempt is not None else "missing"
    if status in charge_rules.ANSWERED:
        finding.resolved = True
        finding.resolution = f"adopted Stripe's {adopted.status}: the attempt is now {status}"
        log.warning(
            "reconcile.adopted_stripe_outcome",
            kind=finding.kind,
            invoice_id=finding.invoice_id,
            attempt_id=finding.attempt_id,
            payment_intent=adopted.id,
            attempt_status=status,
        )
    else:
        finding.resolution = f"not adopted ({outcome}): the attempt is still {status}"


def reconcile_last_two_days() -> ReconcileReport | None:
    """Beat's nightly run: reconcile the last two days and adopt Stripe's truth where safe;
    alert (an error event and a metric) on every duplicate charge still unrefunded. None
    when Stripe could not be asked (the next night covers these days again)."""
    until = datetime.now(UTC)
    try:
        report = reconcile(until - NIGHTLY_WINDOW, until, fix=True)
    except (StripeUnavailable, StripeRateLimited) as exc:
        log.error("reconcile.stripe_unavailable", error=str(exc)[:500])
        return None
    for finding in report.open_findings:
        if finding.kind == DUPLICATE:
            DUPLICATE_CHARGES.inc()
            log.error(
                "reconcile.duplicate_charge",
                invoice_id=finding.invoice_id,
                payment_intents=[intent.id for intent in finding.payment_intents],
                to_refund=finding.amount,
                currency=finding.currency,
            )
        else:
            log.warning(
                "reconcile.discrepancy",
                kind=finding.kind,
                invoice_id=finding.invoice_id,
                attempt_id=finding.attempt_id,
                detail=finding.detail,
            )
    return report
