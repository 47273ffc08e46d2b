"""/v1/jobs: the state of recorded follow-up work, read from the outbox."""

from __future__ import annotations

from flask import Blueprint

from billing.api.endpoint import ViewResult, customer_scope, endpoint, principal
from billing.platform import outbox
from billing.platform.errors import NotFound
from billing.views import schemas
from billing.views.serializers import job_out

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@endpoint(
    bp,
    "/<job_id>",
    "GET",
    summary="Retrieve a job's state",
    response=schemas.JobOut,
    errors=(404,),
)
def get_job(job_id: str) -> ViewResult:
    job = outbox.get_job(job_id, customer_scope=customer_scope())
    if job is None:
        raise NotFound(f"No such job: '{job_id}'", param="id")
    return job_out(job, error_detail=principal().is_admin), 200
