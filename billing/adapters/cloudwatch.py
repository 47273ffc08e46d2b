"""Custom CloudWatch metrics: each queue's depth and oldest message age, which the ECS
workers' target-tracking policies scale on (deploy/ecs/scaling/).

Credentials and region come from the usual AWS chain (the task role and AWS_REGION on
ECS); AWS_ENDPOINT_URL_CLOUDWATCH points boto3 elsewhere, as it does for any client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

QUEUE_DEPTH = "QueueDepth"
OLDEST_MESSAGE_AGE = "OldestMessageAgeSeconds"
QUEUE_DIMENSION = "Queue"


@dataclass(frozen=True)
class QueueSample:
    queue: str
    depth: int  # messages waiting in the broker
    oldest_message_age_seconds: float  # 0 when nothing waits


class CloudWatchMetrics:
    name = "cloudwatch"

    def __init__(self, namespace: str, *, client: Any = None) -> None:
        self.namespace = namespace
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            # Imported late: boto3 takes a while to load and only this job needs it here.
            import boto3
            from botocore.config import Config

            # Short timeouts: a sample a minute late is worth less than the next one, and
            # the job must not hold its worker thread while CloudWatch is slow.
            self._client = boto3.client(
                "cloudwatch",
                config=Config(
                    connect_timeout=5,
                    read_timeout=10,
                    retries={"mode": "standard", "max_attempts": 3},
                ),
            )
        return self._client

    def put_queue_samples(self, samples: Sequence[QueueSample]) -> None:
        """One PutMetricData call for every queue (two values each, well under its limit
        of 1,000 values per call). Raises botocore's errors as they come."""
        data = []
        for sample in samples:
            dimensions = [{"Name": QUEUE_DIMENSION, "Value": sample.queue}]
            data.append(
                {
                    "MetricName": QUEUE_DEPTH,
                    "Dimensions": dimensions,
                    "Value": float(sample.depth),
                    "Unit": "Count",
                }
            )
            data.append(
                {
                    "MetricName": OLDEST_MESSAGE_AGE,
                    "Dimensions": dimensions,
                    "Value": float(sample.oldest_message_age_seconds),
                    "Unit": "Seconds",
                }
            )
        if data:
            self.client.put_metric_data(Namespace=self.namespace, MetricData=data)
