"""Beat's billing.publish_queue_metrics against real Redis and PostgreSQL, with CloudWatch
played by moto: what the ECS workers' autoscaling reads is what the queues hold."""

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import func, update

from billing.extensions import db
from billing.models import OutboxJob
from billing.platform import jobs

NAMESPACE = "BillingTest"
REGION = "eu-west-1"


@pytest.fixture
def cloudwatch(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_CLOUDWATCH", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


@pytest.fixture
def publishing_celery(app, service_env, cloudwatch):
    """The service with CLOUDWATCH_NAMESPACE set, its tasks run in this process."""
    from billing import create_app
    from workers.app import make_celery

    publishing = create_app({**service_env, "CLOUDWATCH_NAMESPACE": NAMESPACE})
    try:
        yield make_celery(publishing)
    finally:
        make_celery(app)


def _published(cloudwatch, metric, queue):
    now = datetime.now(UTC)
    answer = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName=metric,
        Dimensions=[{"Name": "Queue", "Value": queue}],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum"],
    )
    return [(point["Maximum"], point["Unit"]) for point in answer["Datapoints"]]


def test_each_queue_s_depth_and_oldest_message_age_reach_cloudwatch(
    publishing_celery, cloudwatch, make_customer
):
    first = make_customer(email="first@acme.example")
    make_customer(email="second@acme.example")  # two sync jobs wait on the billing queue
    db.session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == first["sync_job"])
        .values(sent_at=func.now() - timedelta(minutes=2))
    )
    db.session.commit()

    published = publishing_celery.tasks[jobs.PUBLISH_QUEUE_METRICS].apply().get()

    assert published == len(jobs.QUEUES)
    assert _published(cloudwatch, "QueueDepth", "billing") == [(2.0, "Count")]
    assert _published(cloudwatch, "QueueDepth", "pdf") == [(0.0, "Count")]
    assert _published(cloudwatch, "QueueDepth", "mail") == [(0.0, "Count")]
    [(age, unit)] = _published(cloudwatch, "OldestMessageAgeSeconds", "billing")
    assert unit == "Seconds" and 120 <= age < 180  # the oldest waiting message, not the newest
    assert _published(cloudwatch, "OldestMessageAgeSeconds", "pdf") == [(0.0, "Seconds")]


def test_nothing_is_published_when_no_namespace_is_configured(
    celery_app, cloudwatch, make_customer
):
    make_customer()

    published = celery_app.tasks[jobs.PUBLISH_QUEUE_METRICS].apply().get()

    assert published == 0
    assert cloudwatch.list_metrics()["Metrics"] == []


def test_beat_starts_the_publisher_every_minute_on_the_billing_queue(app, celery_app):
    from workers.routing import route_by_name
    from workers.schedule import beat_schedule

    entry = beat_schedule(app.config["BILLING_SETTINGS"])["publish-queue-metrics"]

    assert entry["task"] == jobs.PUBLISH_QUEUE_METRICS
    assert entry["schedule"] == timedelta(minutes=1)
    assert entry["options"]["expires"] == 60  # a sample that waited a minute is superseded
    assert jobs.PUBLISH_QUEUE_METRICS in celery_app.tasks
    assert route_by_name(jobs.PUBLISH_QUEUE_METRICS, (), {}, {}) == {"queue": "billing"}
