"""A Stripe of the test's own, for use cases handed fake gateways."""

from __future__ import annotations

import dataclasses
from typing import Any

from billing.adapters.stripe_gateway import (
    CardDeclined,
    PaymentIntentResult,
    StripeRateLimited,
    StripeUnavailable,
)


class FakeStripe:
    """PaymentIntents in a dict, keyed by idempotency key as Stripe keys them. `lose_next`
    drops the next answer after acting, as a cut connection does; `decline_next` refuses
    with that code; `rate_limit_next` refuses before acting, as Stripe's 429 does."""

    def __init__(self) -> None:
        self.intents: dict[str, PaymentIntentResult] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.created = 0
        self.canceled: list[str] = []
        self.lose_next = False
        self.decline_next: str | None = None
        self.rate_limit_next = False

    def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
        **_: Any,
    ) -> PaymentIntentResult:
        if self.rate_limit_next:
            self.rate_limit_next = False
            raise StripeRateLimited("too many requests", retry_after=1.0)
        if idempotency_key not in self.intents:
            self.created += 1
            intent_id = f"pi_fake_{self.created}"
            status = "requires_payment_method" if self.decline_next else "succeeded"
            self.intents[idempotency_key] = PaymentIntentResult(
                intent_id, status, amount, currency, stripe_amount=amount
            )
            self.metadata[intent_id] = metadata
        intent = self.intents[idempotency_key]
        if self.decline_next:
            code, self.decline_next = self.decline_next, None
            raise CardDeclined("Your card was declined.", code=code, payment_intent_id=intent.id)
        if self.lose_next:
            self.lose_next = False
            raise StripeUnavailable("connection reset")
        return intent

    def find_payment_intents_by_metadata(
        self, key: str, value: str, **_: Any
    ) -> list[PaymentIntentResult]:
        return [
            intent
            for intent in self.intents.values()
            if self.metadata[str(intent.id)].get(key) == value
        ]

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        return next(i for i in self.intents.values() if i.id == payment_intent_id)

    def cancel_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        self.canceled.append(payment_intent_id)
        intent = self.retrieve_payment_intent(payment_intent_id)
        return dataclasses.replace(intent, status="canceled")
