"""GET /v1/jobs/{id}: a customer key learns how its job stands as a stable code; the error
text recorded for operators (hosts, addresses, other ids) is for admin keys only."""

from __future__ import annotations

import json

import pytest

from billing.platform import outbox

RECORDED = (
    'psycopg.OperationalError: connection to server at "10.0.3.7", port 5432 failed '
    "while syncing cus_01someoneelse"
)


@pytest.mark.parametrize(
    ("outcome", "state", "code"),
    [
        ("will_retry", "pending", "retrying"),
        ("failed", "failed", "failed"),
        ("dead_lettered", "dead_lettered", "dead_lettered"),
    ],
)
def test_a_customer_key_sees_a_stable_code_for_its_failing_job_and_an_admin_the_error(
    admin, make_customer, customer_api, outcome, state, code
):
    customer = make_customer()
    job_id = customer["sync_job"]
    started = outbox.start_job(job_id)
    assert started is not None
    if outcome == "will_retry":
        assert outbox.job_will_retry(started, RECORDED, countdown=30)
    elif outcome == "failed":
        assert outbox.job_failed(started, RECORDED)
    else:
        assert outbox.job_dead_lettered(started, RECORDED)

    response = customer_api(customer["id"]).get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    seen = response.get_json()
    assert (seen["state"], seen["error_code"], seen["last_error"]) == (state, code, None)
    assert "10.0.3.7" not in json.dumps(seen) and "someoneelse" not in json.dumps(seen)

    seen_by_admin = admin.get(f"/v1/jobs/{job_id}").get_json()
    assert (seen_by_admin["error_code"], seen_by_admin["last_error"]) == (code, RECORDED)


def test_a_job_without_trouble_has_no_error_code(admin, make_customer, customer_api):
    customer = make_customer()
    seen = customer_api(customer["id"]).get(f"/v1/jobs/{customer['sync_job']}").get_json()
    assert (seen["state"], seen["error_code"], seen["last_error"]) == ("sent", None, None)
