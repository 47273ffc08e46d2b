"""Stripe behind a small interface: the real SDK, pointed at Stripe or at a local emulator.

Amounts cross this interface in our minor units (billing.domain.money) both ways: every
amount sent is converted to Stripe's unit for its currency here (ISK: 5 krónur are
`amount=500`), and every amount read back is converted to ours, so no service ever holds a
Stripe-unit amount. A PaymentIntent also keeps Stripe's own figure, for exact comparison.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from billing.adapters.stripe_pacing import PacedRequestsClient, StripePacer, advised_wait
from billing.domain.money import from_stripe_amount, to_stripe_amount


class StripeUnavailable(Exception):
    """No answer, a timeout or a 5xx: the outcome is unknown, never a failure."""


class StripeRateLimited(Exception):
    """Stripe answered 429 for longer than the client waits: it did not act on the request,
    so the outcome is known (nothing happened), neither unknown nor refused. The work
    comes back after `retry_after` seconds, and the try does not count against it."""

    spends_attempt = False

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StripeRejected(Exception):
    """Stripe answered with a definite refusal (invalid request, card error)."""

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass(frozen=True)
class PaymentIntentResult:
    """What we keep of a PaymentIntent: enough to decide an attempt's outcome."""

    id: str | None
    status: str  # succeeded | requires_action | requires_payment_method | processing | ...
    amount: int  # our minor units
    currency: str = ""  # as Stripe reports it; empty when not reported
    decline_code: str | None = None
    failure_message: str | None = None
    next_action: dict[str, Any] | None = None
    client_secret: str | None = None
    # Stripe's own `amount`, in its unit for the currency, when read from Stripe.
    stripe_amount: int | None = None


@dataclass(frozen=True)
class ListedPaymentIntent:
    """A PaymentIntent as the reconciler compares it with our ledger."""

    id: str
    status: str
    amount: int  # our minor units, as every amount below
    currency: str
    created: int  # Unix seconds, as Stripe gives it
    metadata: dict[str, str]
    amount_refunded: int  # refunded on its charge: a fully refunded duplicate is resolved


@dataclass(frozen=True)
class RefundResult:
    id: str
    status: str
    amount: int


@dataclass(frozen=True)
class SetupIntentResult:
    """A SetupIntent: how a customer saves a card on a page, Stripe.js taking the number
    (and any 3-D Secure) so that it never reaches this service."""

    id: str
    status: str
    client_secret: str | None
    stripe_customer_id: str | None
    payment_method: str | None


def _setup_result(raw: dict[str, Any]) -> SetupIntentResult:
    method = raw.get("payment_method")
    if isinstance(method, dict):
        method = method.get("id")
    return SetupIntentResult(
        id=raw["id"],
        status=raw["status"],
        client_secret=raw.get("client_secret"),
        stripe_customer_id=raw.get("customer"),
        payment_method=method,
    )


class CardDeclined(StripeRejected):
    """Stripe refused the charge itself: a definite, final failure of this attempt."""

    def __init__(self, message: str, *, code: str | None, payment_intent_id: str | None):
        super().__init__(message, code=code)
        self.payment_intent_id = payment_intent_id


class StripeGateway(Protocol):
    def create_customer(
        self, *, name: str, email: str, metadata: dict[str, str], idempotency_key: str
    ) -> str: ...

    def find_customer_by_metadata(self, key: str, value: str) -> str | None: ...

    def attach_default_payment_method(
        self, *, stripe_customer_id: str, payment_method: str, idempotency_key: str
    ) -> None: ...

    def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        stripe_customer_id: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> PaymentIntentResult: ...

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult: ...

    def cancel_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult: ...

    def find_payment_intents_by_metadata(
        self, key: str, value: str, *, stripe_customer_id: str | None = None
    ) -> list[PaymentIntentResult]: ...

    def list_payment_intents(
        self, *, created_from: int, created_until: int
    ) -> Iterator[ListedPaymentIntent]: ...

    def create_refund(
        self,
        *,
        payment_intent_id: str,
        amount: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> RefundResult: ...

    def find_refunds_by_metadata(
        self, payment_intent_id: str, key: str, value: str
    ) -> list[RefundResult]: ...

    def create_setup_intent(
        self, *, stripe_customer_id: str, metadata: dict[str, str]
    ) -> SetupIntentResult: ...

    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentResult: ...


class StripeSdkGateway:
    # Timeouts bound how long a worker waits for an answer it may never get; what
    # happens after a timeout is the caller's reconciliation, never a blind retry.
    TIMEOUT_SECONDS = 20

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        timeout_seconds: float | None = None,
        *,
        pacer: StripePacer | None = None,
    ) -> None:
        base_addresses = {"api": api_base} if api_base else {}
        timeout = timeout_seconds or self.TIMEOUT_SECONDS
        self._client = stripe.StripeClient(
            api_key,
            base_addresses=base_addresses,  # type: ignore[arg-type]
            # The SDK must never retry on its own: a retried create is a second object
            # on any server that does not deduplicate, and we own every retry. Only a
            # 429, which Stripe did not act on, is retried, by the paced client.
            max_network_retries=0,
            # 429s are waited out for as long as one call may take: the caller's claim
            # on the side effect (three timeouts) outlasts the wait and the call together.
            http_client=PacedRequestsClient(
                timeout=timeout,
                pacer=pacer,
                rate_limited_budget=timeout,
                api_base=api_base or stripe.DEFAULT_API_BASE,
            ),
        )

    def create_customer(
        self, *, name: str, email: str, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        with _translated_errors():
            customer = self._client.v1.customers.create(
                params={"name": name, "email": email, "metadata": metadata},
                options={"idempotency_key": idempotency_key},
            )
        return str(customer.id)

    def find_customer_by_metadata(self, key: str, value: str) -> str | None:
        with _translated_errors():
            found = self._client.v1.customers.search(
                params={"query": _metadata_query(key, value), "limit": 10}
            )
        # Search matches a value whatever its case; our keys are exact.
        exact = (c for c in found.data if (c.to_dict().get("metadata") or {}).get(key) == value)
        return next((str(customer.id) for customer in exact), None)

    def attach_default_payment_method(
        self, *, stripe_customer_id: str, payment_method: str, idempotency_key: str
    ) -> None:
        with _translated_errors():
            self._client.v1.payment_methods.attach(
                payment_method,
                params={"customer": stripe_customer_id},
                options={"idempotency_key": f"{idempotency_key}:attach"},
            )
            self._client.v1.customers.update(
                stripe_customer_id,
                params={"invoice_settings": {"default_payment_method": payment_method}},
                options={"idempotency_key": f"{idempotency_key}:default"},
            )

    def create_payment_intent(
        self,
        *,
        amount: int,
        currency: str,
        stripe_customer_id: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> PaymentIntentResult:
        # Before any request: an amount Stripe would refuse is never sent.
        stripe_amount = to_stripe_amount(amount, currency)
        try:
            with _translated_errors():
                # The answer as plain JSON: the SDK's typed objects, built field by field
                # and turned back into a dict, would cost the hottest call more CPU than
                # everything else the SDK does for it. Its errors are raised as ever.
                answer = self._client.raw_request(
                    "post",
                    "/v1/payment_intents",
                    amount=stripe_amount,
                    currency=currency,
                    customer=stripe_customer_id,
                    payment_method=payment_method,
                    confirm=True,
                    off_session=True,
                    metadata=metadata,
                    idempotency_key=idempotency_key,
                )
        except StripeRejected as exc:
            cause = exc.__cause__
            if isinstance(cause, stripe.CardError):
                error = cause.error
                intent_id = error.payment_intent.id if error and error.payment_intent else None
                raise CardDeclined(
                    exc.message,
                    code=(error.decline_code if error else None) or cause.code,
                    payment_intent_id=intent_id,
                ) from cause
            raise
        return _intent_result(answer.data)

    def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        with _translated_errors():
            intent = self._client.v1.payment_intents.retrieve(payment_intent_id)
        return _intent_result(intent.to_dict())

    def create_setup_intent(
        self, *, stripe_customer_id: str, metadata: dict[str, str]
    ) -> SetupIntentResult:
        # No idempotency key: each press of the button may ask for a new one, and an
        # unconfirmed SetupIntent charges nothing and expires on its own.
        with _translated_errors():
            intent = self._client.v1.setup_intents.create(
                params={  # type: ignore[arg-type]
                    "customer": stripe_customer_id,
                    "usage": "off_session",
                    "payment_method_types": ["card"],
                    "metadata": metadata,
                }
            )
        return _setup_result(intent.to_dict())

    def retrieve_setup_intent(self, setup_intent_id: str) -> SetupIntentResult:
        with _translated_errors():
            intent = self._client.v1.setup_intents.retrieve(setup_intent_id)
        return _setup_result(intent.to_dict())

    def cancel_payment_intent(self, payment_intent_id: str) -> PaymentIntentResult:
        with _translated_errors():
            intent = self._client.v1.payment_intents.cancel(payment_intent_id)
        return _intent_result(intent.to_dict())

    def find_payment_intents_by_metadata(
        self, key: str, value: str, *, stripe_customer_id: str | None = None
    ) -> list[PaymentIntentResult]:
        query = _metadata_query(key, value)
        if stripe_customer_id is not None:
            query += f" AND customer:{_quoted(stripe_customer_id)}"
        with _translated_errors():
            found = self._client.v1.payment_intents.search(params={"query": query, "limit": 100})
            intents = [i.to_dict() for i in found.auto_paging_iter()]
        # Search matches a value whatever its case; our keys are exact.
        return [
            _intent_result(intent)
            for intent in intents
            if (intent.get("metadata") or {}).get(key) == value
        ]

    def list_payment_intents(
        self, *, created_from: int, created_until: int
    ) -> Iterator[ListedPaymentIntent]:
        """Every PaymentIntent created in [created_from, created_until), page by page, each
        with its charge expanded (for what was refunded)."""
        params: stripe.params.PaymentIntentListParams = {
            "limit": 100,
            "created": {"gte": created_from, "lt": created_until},
            "expand": ["data.latest_charge"],
        }
        with _translated_errors():
            page = self._client.v1.payment_intents.list(params=params)
            for item in page.auto_paging_iter():
                yield _listed_intent(item.to_dict())

    def create_refund(
        self,
        *,
        payment_intent_id: str,
        amount: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> RefundResult:
        stripe_amount = to_stripe_amount(amount, currency)
        with _translated_errors():
            refund = self._client.v1.refunds.create(
                params={
                    "payment_intent": payment_intent_id,
                    "amount": stripe_amount,
                    "metadata": metadata,
                },
                options={"idempotency_key": idempotency_key},
            )
        return _refund_result(refund.to_dict())

    def find_refunds_by_metadata(
        self, payment_intent_id: str, key: str, value: str
    ) -> list[RefundResult]:
        with _translated_errors():
            page = self._client.v1.refunds.list(
                params={"payment_intent": payment_intent_id, "limit": 100}
            )
            refunds = [r.to_dict() for r in page.auto_paging_iter()]
        return [_refund_result(r) for r in refunds if (r.get("metadata") or {}).get(key) == value]


def _refund_result(refund: dict[str, Any]) -> RefundResult:
    currency = str(refund.get("currency") or "")
    return RefundResult(
        id=str(refund["id"]),
        status=str(refund["status"]),
        amount=from_stripe_amount(int(refund.get("amount") or 0), currency),
    )


def _quoted(value: str) -> str:
    """A string in Stripe's search query language: quoted, its quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _metadata_query(key: str, value: str) -> str:
    return f"metadata[{_quoted(key)}]:{_quoted(value)}"


def _intent_result(intent: dict[str, Any]) -> PaymentIntentResult:
    error = intent.get("last_payment_error") or {}
    currency = str(intent.get("currency") or "").lower()
    stripe_amount = int(intent.get("amount") or 0)
    return PaymentIntentResult(
        id=intent.get("id"),
        status=str(intent.get("status")),
        amount=from_stripe_amount(stripe_amount, currency),
        currency=currency,
        decline_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        next_action=intent.get("next_action"),
        client_secret=intent.get("client_secret"),
        stripe_amount=stripe_amount,
    )


def _listed_intent(intent: dict[str, Any]) -> ListedPaymentIntent:
    charge = intent.get("latest_charge")
    refunded = int(charge.get("amount_refunded") or 0) if isinstance(charge, dict) else 0
    currency = str(intent.get("currency") or "").lower()
    return ListedPaymentIntent(
        id=str(intent["id"]),
        status=str(intent.get("status")),
        amount=from_stripe_amount(int(intent.get("amount") or 0), currency),
        currency=currency,
        created=int(intent.get("created") or 0),
        metadata={str(k): str(v) for k, v in (intent.get("metadata") or {}).items()},
        amount_refunded=from_stripe_amount(refunded, currency),
    )


# Errors that say nothing about the request itself: no answer, overload, an idempotency
# conflict, or our own credentials. Each may heal; none may mark the work as refused.
_NOT_A_REFUSAL = (
    stripe.APIConnectionError,
    stripe.APIError,
    stripe.IdempotencyError,
    stripe.AuthenticationError,
    stripe.PermissionError,
)


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except stripe.RateLimitError as exc:
        wait = advised_wait(exc.headers or {}, retries=4)
        raise StripeRateLimited(str(exc), retry_after=wait) from exc
    except _NOT_A_REFUSAL as exc:
        raise StripeUnavailable(str(exc)) from exc
    except stripe.StripeError as exc:
        # 409: the same idempotency key is still being processed by Stripe.
        if (exc.http_status or 0) >= 500 or exc.http_status == 409:
            raise StripeUnavailable(str(exc)) from exc
        error = exc.error
        raise StripeRejected(
            (error.message if error else None) or str(exc),
            code=exc.code,
            param=error.param if error else None,
        ) from exc


class WebhookSignatureInvalid(Exception):
    def __init__(self, message: str, *, expired: bool) -> None:
        super().__init__(message)
        self.expired = expired


def verify_webhook(payload: bytes, signature_header: str, secret: str, tolerance: int) -> Any:
    """The parsed payload, if Stripe signed exactly these bytes within `tolerance` seconds.
    Its shape is the caller's to check: a valid signature says who sent it, nothing more."""
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance)
    except UnicodeDecodeError as exc:
        raise WebhookSignatureInvalid("the payload is not UTF-8 text", expired=False) from exc
    except stripe.SignatureVerificationError as exc:
        message = str(exc.user_message or exc)
        raise WebhookSignatureInvalid(message, expired="tolerance" in message.lower()) from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WebhookSignatureInvalid(f"the payload is not JSON: {exc}", expired=False) from exc


def intent_from_payload(intent: dict[str, Any]) -> PaymentIntentResult:
    return _intent_result(intent)
