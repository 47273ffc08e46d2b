"""The broker's transport: kombu's Redis transport with one Redis client per channel. Same
messages, same acks, same URL in the logs; only the throwaway clients are gone."""

import redis
from kombu import Connection, Queue

from billing.adapters import redis_transport
from billing.adapters.task_queue import celery_settings


def _connection(redis_url: str) -> Connection:
    settings = celery_settings(redis_url)
    return Connection(redis_url, transport=settings["broker_transport"])


def test_the_service_uses_it_for_redis_urls_and_not_for_others(redis_url):
    assert celery_settings(redis_url)["broker_transport"] == redis_transport.TRANSPORT
    assert "broker_transport" not in celery_settings("amqp://guest@localhost//")


def test_a_channel_sends_and_acks_through_one_client(redis_url, redis_client):
    with _connection(redis_url) as connection:
        channel = connection.default_channel
        assert isinstance(channel, redis_transport.Channel)
        queue = connection.SimpleQueue(Queue("transport-test", routing_key="transport-test"))
        for n in range(3):
            queue.put({"n": n})
        taken = [queue.get(block=True, timeout=5) for _ in range(3)]
        assert [message.payload["n"] for message in taken] == [0, 1, 2]
        # Taken but not acked: kombu's visibility bookkeeping holds them.
        assert redis_client.zcard("unacked_index") == 3
        for message in taken:
            message.ack()
        assert redis_client.zcard("unacked_index") == 0
        assert redis_client.hlen("unacked") == 0
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and isinstance(first, redis.Redis)
        queue.close()


def test_a_channel_that_reconnected_uses_a_client_of_its_new_pool(redis_url):
    with _connection(redis_url) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as before:
            assert before.connection_pool is channel.pool
        channel._pool = None  # as kombu's _disconnect_pools leaves it after a lost connection
        with channel.conn_or_acquire() as after:
            assert after is not before
            assert after.connection_pool is channel.pool
            assert after.ping()


def test_the_url_in_logs_still_reads_redis(redis_url):
    with _connection(redis_url) as connection:
        assert connection.as_uri().startswith("redis://")
