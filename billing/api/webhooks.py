"""/v1/webhooks/stripe: verified by Stripe's signature, not by an API key."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from billing.adapters.stripe_gateway import WebhookSignatureInvalid
from billing.api.errors import ApiError
from billing.platform.metrics import WEBHOOK_EVENTS
from billing.stripe_events import stripe_events

bp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks")


@bp.post("/stripe")
def stripe_webhook() -> Response:
    signature = request.headers.get("Stripe-Signature", "")
    if not signature:
        raise ApiError(400, "signature_missing", "the Stripe-Signature header is missing")
    try:
        event_id, new = stripe_events.receive_event(request.get_data(), signature)
    except WebhookSignatureInvalid as exc:
        code = "signature_expired" if exc.expired else "signature_invalid"
        # The type is the sender's word, unproven: one label value, whatever it claims.
        WEBHOOK_EVENTS.labels(type="unverified", outcome="bad_signature").inc()
        raise ApiError(400, code, f"the event's signature does not verify: {exc}") from exc
    return jsonify({"received": True, "id": event_id, "duplicate": not new})
