"""Beat's safety net is not stuck behind a backlog: on the real Redis broker, a beat task
sent after many recorded jobs is still the first message a worker takes from the queue."""

from kombu import Queue

from billing.adapters.broker import inspect_queues
from billing.adapters.task_queue import CeleryJobPublisher
from billing.config import Settings
from billing.platform import jobs
from workers.schedule import beat_schedule


def _next_task_names(celery_app, queue: str, count: int) -> list[str]:
    names = []
    with celery_app.connection_for_read() as connection:
        # The same Redis lists a worker reads, taken in the same order (highest first).
        simple = connection.SimpleQueue(Queue(queue, routing_key=queue), no_ack=True)
        for _ in range(count):
            names.append(simple.get(block=True, timeout=5).headers["task"])
        simple.close()
    return names


def test_a_beat_task_is_taken_before_the_jobs_already_waiting(app, celery_app, redis_url):
    publisher = CeleryJobPublisher(redis_url)
    for n in range(5):
        publisher.publish(f"job_{n}", jobs.CHARGE_INVOICE, None)
    sweep = beat_schedule(app.config["BILLING_SETTINGS"])["sweep-outbox"]
    celery_app.send_task(sweep["task"], **sweep["options"])

    [billing] = [q for q in inspect_queues(redis_url, jobs.QUEUES) if q.name == "billing"]
    assert billing.depth == 6
    assert billing.oldest_job_id == "job_0"  # the backlog's age is still the jobs' age
    assert (
        _next_task_names(celery_app, "billing", 6)
        == [jobs.SWEEP_OUTBOX] + [jobs.CHARGE_INVOICE] * 5
    )


def test_every_scheduled_task_goes_ahead_of_recorded_jobs(app):
    for name, entry in beat_schedule(app.config["BILLING_SETTINGS"]).items():
        assert entry["options"]["priority"] < jobs.JOB_PRIORITY, name


def test_a_sweep_every_second_still_waits_for_a_busy_worker_before_it_expires():
    settings = Settings.from_env({"OUTBOX_SWEEP_INTERVAL_SECONDS": "1"})
    sweep = beat_schedule(settings)["sweep-outbox"]
    assert sweep["options"]["expires"] >= 15
