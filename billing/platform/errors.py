"""Errors a use case raises; the API maps each to a status and a stable code."""

from __future__ import annotations


class ServiceError(Exception):
    code = "service_error"
    status = 400
    # A retryable error says "not now" (a dependency down, work still in progress): its
    # response is not stored under the request's Idempotency-Key, so a retry runs afresh.
    retryable = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(ServiceError):
    code = "resource_missing"
    status = 404


class PermissionDenied(ServiceError):
    code = "permission_denied"
    status = 403


class Conflict(ServiceError):
    code = "conflict"
    status = 409


class InvalidStateTransition(Conflict):
    code = "invalid_state_transition"


class InvoiceNotEditable(Conflict):
    code = "invoice_not_editable"


class InvalidRequest(ServiceError):
    code = "invalid_request"
    status = 422


class UnchargeableAmount(InvalidRequest):
    """An amount finer than Stripe charges its currency (fils not in tens for KWD)."""

    code = "amount_not_chargeable"


class TransientJobError(Exception):
    """The job may succeed later (network, lock held, outcome unknown): retry with backoff,
    or after `retry_after` seconds when the cause says when it ends (a lease running out)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HeldElsewhere(TransientJobError):
    """Another live run holds the side effect this job needs (a duplicate delivery, or a
    run the sweeper presumed lost that is still going): come back when its lease ends.
    Waiting is not a failed try, so it does not use up one of the job's attempts: under
    many worker deaths a job could otherwise be dead-lettered for having waited."""


class PermanentJobError(Exception):
    """The job cannot succeed by retrying: mark it failed for an operator to see."""
