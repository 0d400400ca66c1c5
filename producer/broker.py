"""The broker settings producer and worker must agree on, and the publisher that turns job ids into
messages (their format is `producer.wire`'s). No Celery result backend: the jobs table is it."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.utils.url import maybe_sanitize_url

from producer.notify import redis_for
from producer.registry import queue_name
from producer.settings import ProducerSettings
from producer.wire import MAX_JOBS_PER_MESSAGE, PRIORITY_STEPS, JobMessage, first_job_id, redis_envelope, redis_list, task_message

__all__ = ["Publisher", "broker_config", "chunked", "model_queue"]

log = logging.getLogger(__name__)


def broker_config(settings: ProducerSettings) -> dict[str, Any]:
    """Celery settings shared by every textq process that talks to the broker."""
    return {
        "broker_url": settings.broker_url,
        # JSON only: accepting pickle would let anyone who can write to Redis run code in workers.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        # No visibility_timeout: it only restores unacked messages, and the model queues are read with no_ack.
        "broker_transport_options": {
            "queue_order_strategy": "priority",
            "priority_steps": PRIORITY_STEPS,
        },
        "task_default_priority": 5,
    }


def model_queue(model: str) -> Queue:
    """A model's queue, bound to a direct exchange of the same name (what a worker consumes)."""
    name = queue_name(model)
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def chunked(ids: Sequence[uuid.UUID], size: int) -> Iterable[Sequence[uuid.UUID]]:
    size = min(size, MAX_JOBS_PER_MESSAGE)
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class Publisher:
    """Sends run-jobs messages on each model's queue.

    On Redis it pushes the envelopes itself, a call's messages in one pipelined round trip (half the
    CPU of kombu's producer per one-job publish); other brokers go through kombu's producer.
    """

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self.app = Celery("textq-producer", set_as_current=False)
        self.app.conf.update(broker_config(settings))
        self.redis = redis_for(settings.broker_url)

    def publish(self, model: str, priority: int, job_ids: Sequence[uuid.UUID]) -> None:
        self.publish_groups([(model, priority, job_ids)])

    def publish_groups(self, groups: Iterable[tuple[str, int, Sequence[uuid.UUID]]], *, front: bool = False) -> None:
        """Publish each (model, priority, ids) group, `jobs_per_message` ids per message.

        `front` (Redis only): the messages go to the end of their lists that is read next, for jobs
        older than every message waiting there (the sweeper's), so that they keep their place in line.
        """
        messages = [
            (queue_name(model), priority, *task_message(JobMessage(model=model, job_ids=list(chunk))))
            for model, priority, ids in groups
            for chunk in chunked(ids, self.settings.jobs_per_message)
        ]
        if self.redis is not None:
            pipe = self.redis.pipeline(transaction=False)
            push = pipe.rpush if front else pipe.lpush  # consumers pop from the right (BRPOP)
            for queue, priority, body, headers in messages:
                push(redis_list(queue, priority), redis_envelope(queue, priority, body, headers))
            pipe.execute()
            return
        with self.app.producer_or_acquire() as producer:
            # Addressed by name (the anonymous exchange): no binding lookup per publish, and the
            # message lands on the model's queue even before any worker has bound it.
            for queue, priority, body, headers in messages:
                producer.publish(body, exchange="", routing_key=queue, priority=priority,
                                 serializer="json", headers=headers, correlation_id=headers["id"])

    def publish_jobs(self, jobs: Iterable[tuple[uuid.UUID, str, int]], *, front: bool = False) -> None:
        """Publish (id, model, priority) jobs, grouped so that each message carries many ids."""
        groups: dict[tuple[str, int], list[uuid.UUID]] = defaultdict(list)
        for job_id, model, priority in jobs:
            groups[(model, priority)].append(job_id)
        self.publish_groups(((model, priority, ids) for (model, priority), ids in groups.items()), front=front)

    def next_in_line(self, model: str) -> list[uuid.UUID] | None:
        """A job id from the message read next on each of the model's priority lists (none when the
        queue is empty), or None when the broker is not Redis and cannot be peeked at."""
        if self.redis is None:
            return None
        pipe = self.redis.pipeline(transaction=False)
        for step in PRIORITY_STEPS:
            pipe.lindex(redis_list(queue_name(model), step), -1)
        return [job_id for raw in pipe.execute() if raw is not None and (job_id := first_job_id(raw)) is not None]

    def queue_depth(self, model: str) -> int:
        """Messages waiting on a model's queue (all priority levels), not counting reserved ones."""
        with self.app.connection_for_read() as connection:
            try:
                return int(connection.default_channel.queue_declare(queue_name(model), passive=True).message_count)
            except Exception as exc:  # a queue that never existed (e.g. amqp's NOT_FOUND)
                log.debug("queue %s has no depth: %s", queue_name(model), exc)
                return 0

    def redacted_url(self) -> str:
        return str(maybe_sanitize_url(self.settings.broker_url))

    def close(self) -> None:
        self.app.close()
        if self.redis is not None:
            self.redis.close()
