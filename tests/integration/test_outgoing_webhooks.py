"""Outgoing webhooks against a receiver of the test's own on loopback (allowed by
WEBHOOK_ALLOWED_HOSTS): what it receives, verified with its own HMAC code, is the truth."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from billing.extensions import db
from billing.models import OutboxJob, WebhookDelivery, WebhookEndpoint
from billing.platform import jobs
from billing.webhooks import deliveries
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def service_env(service_env: dict[str, str]) -> dict[str, str]:
    return {
        **service_env,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "SELLER_EMAIL": "ops@saas.example",
    }


@pytest.fixture
def receiver() -> Any:
    found = WebhookReceiver()
    yield found
    found.stop()


@pytest.fixture
def deliver_due(celery_app):
    """Dispatch new events, then run the webhook jobs that are due (a retry whose time has
    not come stays), round after round until none is: the worker's code path in-process."""

    def run(rounds: int = 10) -> int:
        ran = 0
        for _ in range(rounds):
            deliveries.dispatch_events()
            due = db.session.scalars(
                select(OutboxJob.id).where(
                    OutboxJob.name.in_((jobs.DELIVER_WEBHOOK, jobs.SEND_SELLER_NOTICE)),
                    (OutboxJob.state == "sent")
                    | ((OutboxJob.state == "pending") & (OutboxJob.lease_expires_at <= func.now())),
                )
            ).all()
            db.session.commit()
            if not due:
                return ran
            for job_id in due:
                name = db.session.scalar(select(OutboxJob.name).where(OutboxJob.id == job_id))
                db.session.commit()
                celery_app.tasks[name].apply(kwargs={"job_id": job_id})
                ran += 1
        return ran

    return run


def _make_due_now() -> None:
    """Bring every scheduled retry forward: the backoff has passed."""
    db.session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.state == "pending")
        .values(next_attempt_at=func.now() - timedelta(seconds=1))
    )
    db.session.commit()


def _endpoint(admin: Any, receiver: WebhookReceiver, **fields: Any) -> dict[str, Any]:
    response = admin.post(
        "/v1/webhook_endpoints",
        json={"url": receiver.url, "enabled_events": ["*"], **fields},
    )
    assert response.status_code == 200, response.get_json()
    created = response.get_json()
    receiver.secrets.append(created["secret"])
    return created


def test_an_endpoint_s_secret_is_shown_once_at_creation(admin, receiver):
    created = _endpoint(admin, receiver, description="the app")
    assert created["secret"].startswith("whsec_")
    shown = admin.get(f"/v1/webhook_endpoints/{created['id']}").get_json()
    assert shown["secret"] is None and shown["description"] == "the app"
    assert [e["id"] for e in admin.get("/v1/webhook_endpoints").get_json()["data"]] == [
        created["id"]
    ]


def test_every_event_reaches_the_receiver_signed_with_its_id_as_idempotency_key(
    admin, make_customer, receiver, deliver_due
):
    _endpoint(admin, receiver)
    customer = make_customer()
    deliver_due()
    [received] = receiver.received
    assert received.signed
    assert received.event["type"] == "customer.created"
    assert received.event["data"]["object"]["id"] == customer["id"]
    assert received.headers["Idempotency-Key"] == received.event["id"]
    logged = admin.get(f"/v1/events/{received.event['id']}").get_json()
    assert logged == received.event


def test_an_endpoint_receives_only_the_types_it_asked_for(
    admin, make_customer, receiver, deliver_due
):
    _endpoint(admin, receiver, enabled_events=["customer.updated"])
    customer = make_customer()
    admin.patch(f"/v1/customers/{customer['id']}", json={"name": "Globex Two"})
    deliver_due()
    assert [r.event["type"] for r in receiver.received] == ["customer.updated"]


def test_a_failing_receiver_is_retried_later_and_each_try_is_recorded(
    admin, make_customer, receiver, deliver_due
):
    endpoint = _endpoint(admin, receiver)
    receiver.status = 500
    make_customer()
    deliver_due()
    assert len(receiver.received) == 1  # the retry is not due yet
    [delivery] = admin.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").get_json()["data"]
    assert delivery["state"] == "pending" and delivery["next_attempt"] is not None
    assert [(a["outcome"], a["status_code"]) for a in delivery["attempts"]] == [("failed", 500)]
    assert delivery["attempts"][0]["response_excerpt"] == "ok"
    receiver.status = 200
    _make_due_now()
    deliver_due()
    [delivery] = admin.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").get_json()["data"]
    assert delivery["state"] == "succeeded"
    assert [a["outcome"] for a in delivery["attempts"]] == ["failed", "delivered"]
    assert len(receiver.accepted()) == 1


def test_a_later_event_of_an_object_waits_for_the_earlier_one_being_retried(
    admin, make_customer, receiver, deliver_due
):
    _endpoint(admin, receiver)
    receiver.status = 500
    customer = make_customer()
    deliver_due()
    admin.patch(f"/v1/customers/{customer['id']}", json={"name": "Second name"})
    other = make_customer()  # another object: never waits for the first
    receiver.status = 200
    deliver_due()
    states = dict(
        db.session.execute(
            select(WebhookDelivery.object_id, WebhookDelivery.state).where(
                WebhookDelivery.object_id == other["id"]
            )
        ).all()
    )
    assert states == {other["id"]: "succeeded"}
    assert [e["type"] for e in receiver.accepted() if e["customer"] == customer["id"]] == []
    _make_due_now()
    deliver_due()
    mine = [e for e in receiver.accepted() if e["customer"] == customer["id"]]
    assert [e["type"] for e in mine] == ["customer.created", "customer.updated"]
    assert mine[0]["sequence"] < mine[1]["sequence"]


def test_a_410_disables_the_endpoint_and_tells_the_seller(
    admin, make_customer, receiver, deliver_due, mailbox
):
    endpoint = _endpoint(admin, receiver)
    receiver.status = 410
    make_customer()
    deliver_due()
    shown = admin.get(f"/v1/webhook_endpoints/{endpoint['id']}").get_json()
    assert shown["enabled"] is False and "410" in shown["disabled_reason"]
    [notice] = [m.message for m in mailbox.messages if "ops@saas.example" in m.rcpt_tos]
    assert endpoint["url"] in notice["Subject"]
    make_customer()
    deliver_due()
    assert len(receiver.received) == 1  # nothing more is sent to it


def test_an_endpoint_failing_for_days_is_disabled(admin, make_customer, receiver, deliver_due):
    endpoint = _endpoint(admin, receiver)
    receiver.status = 503
    db.session.execute(update(WebhookEndpoint).values(failing_since=func.now() - timedelta(days=4)))
    db.session.commit()
    make_customer()
    deliver_due()
    shown = admin.get(f"/v1/webhook_endpoints/{endpoint['id']}").get_json()
    assert shown["enabled"] is False and "no delivery succeeded" in shown["disabled_reason"]
    enabled = admin.patch(f"/v1/webhook_endpoints/{endpoint['id']}", json={"enabled": True})
    assert enabled.get_json()["enabled"] is True and enabled.get_json()["disabled_reason"] is None


def test_a_redirect_is_not_followed(admin, make_customer, receiver, deliver_due):
    target = WebhookReceiver()
    try:
        endpoint = _endpoint(admin, receiver)
        receiver.status = 302
        make_customer()
        deliver_due()
        [delivery] = admin.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").get_json()[
            "data"
        ]
        assert delivery["state"] == "pending"
        assert delivery["attempts"][0]["status_code"] == 302
        assert target.received == []
    finally:
        target.stop()


def test_after_a_roll_both_secrets_sign_until_the_overlap_ends(
    admin, make_customer, receiver, deliver_due
):
    endpoint = _endpoint(admin, receiver)
    old_secret = receiver.secrets[0]
    rolled = admin.post(
        f"/v1/webhook_endpoints/{endpoint['id']}/roll_secret", json={"overlap_seconds": 3600}
    ).get_json()
    receiver.secrets = [rolled["secret"]]
    make_customer()
    deliver_due()
    receiver.secrets = [old_secret]
    make_customer()
    deliver_due()
    assert [r.signed for r in receiver.received] == [True, True]
    signature = receiver.received[0].headers["Billing-Signature"]
    assert signature.count("v1=") == 2
    admin.post(f"/v1/webhook_endpoints/{endpoint['id']}/roll_secret", json={"overlap_seconds": 0})
    make_customer()
    deliver_due()
    assert receiver.received[-1].signed is False  # the old secret no longer signs


def test_a_deleted_endpoint_gets_nothing_more(admin, make_customer, receiver, deliver_due):
    endpoint = _endpoint(admin, receiver)
    assert admin.delete(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 200
    make_customer()
    deliver_due()
    assert receiver.received == []
    assert admin.get(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 404


def test_replay_sends_a_range_again_signed_anew_even_what_the_endpoint_never_got(
    app, admin, make_customer, receiver, deliver_due
):
    endpoint = _endpoint(admin, receiver)
    make_customer()
    deliver_due()
    admin.patch(f"/v1/webhook_endpoints/{endpoint['id']}", json={"enabled": False})
    make_customer()  # dispatched while it is disabled: no delivery for it
    deliver_due()
    admin.patch(f"/v1/webhook_endpoints/{endpoint['id']}", json={"enabled": True})
    result = app.test_cli_runner().invoke(
        args=["webhook-deliveries", "replay", "--endpoint", endpoint["id"], "--since", "1h"]
    )
    assert result.exit_code == 0, result.output
    deliver_due()
    types = [r.event["type"] for r in receiver.received]
    assert types == ["customer.created", "customer.created", "customer.created"]
    assert len({r.event["id"] for r in receiver.received}) == 2
    listed = app.test_cli_runner().invoke(
        args=["webhook-deliveries", "list", "--endpoint", endpoint["id"]]
    )
    assert listed.exit_code == 0 and listed.output.count('"succeeded"') == 2


def test_the_oldest_undelivered_event_s_age_is_a_metric(
    app, admin, make_customer, receiver, deliver_due
):
    endpoint = _endpoint(admin, receiver)
    receiver.status = 500
    make_customer()
    deliver_due()
    ages = deliveries.oldest_undelivered_ages()
    assert set(ages) == {endpoint["id"]} and ages[endpoint["id"]] >= 0
