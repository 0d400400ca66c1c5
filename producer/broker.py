"""Celery's broker side of the contract: the settings producer and worker must agree on, and the
publisher that turns job ids into Celery messages. No Celery result backend: the jobs table is it."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import uuid
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.url import maybe_sanitize_url

from producer.contract import MAX_JOBS_PER_MESSAGE, RUN_JOBS_TASK, JobMessage
from producer.notify import redis_for
from producer.registry import queue_name
from producer.settings import ProducerSettings

log = logging.getLogger(__name__)

# Redis emulates priorities with one list per step; lower number = served first.
PRIORITY_STEPS = [0, 3, 6, 9]
DEFAULT_VISIBILITY_TIMEOUT_S = 3600


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
        "broker_transport_options": {
            # Longer than any batch, or a slow batch is redelivered while it still runs (celery#5935).
            "visibility_timeout": DEFAULT_VISIBILITY_TIMEOUT_S,
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


def task_message(message: JobMessage) -> tuple[list[Any], dict[str, Any]]:
    """A Celery task message (protocol 2) that runs `message`: body and headers.

    Built here rather than by `Celery.send_task`, which spent ~0.6 ms of the producer's CPU per
    message on routing, argument reprs and signals that textq does not use (measured: 1.24 vs
    0.69 ms per one-job publish). The worker reads it in worker.consumer; Celery tools can too.
    """
    task_id = str(uuid.uuid4())
    body = [[message.model_dump(mode="json")], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    headers = {
        "lang": "py", "task": RUN_JOBS_TASK, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
        "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "ignore_result": True,
        "argsrepr": f"{message.model}: {len(message.job_ids)} jobs", "kwargsrepr": "{}",
        "origin": f"{socket.gethostname()}:{os.getpid()}",
    }
    return body, headers


def redis_list(queue: str, priority: int) -> str:
    """The Redis list kombu's Redis transport keeps a queue's messages of `priority` in: one list per
    priority step, the lowest step under the queue's own name (kombu.transport.redis.Channel)."""
    step = PRIORITY_STEPS[bisect_right(PRIORITY_STEPS, min(max(priority, 0), 9)) - 1]
    return f"{queue}{RedisChannel.sep}{step}" if step else queue


def redis_envelope(queue: str, priority: int, body: list[Any], headers: dict[str, Any]) -> str:
    """The JSON envelope kombu's Redis transport stores for a JSON message (body base64-encoded)."""
    payload = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps({
        "body": payload, "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
        "properties": {
            "correlation_id": headers["id"], "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def _first_job_id(envelope: bytes) -> uuid.UUID | None:
    """The first job id in a message as `redis_envelope` writes it (None for any other message)."""
    try:
        body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
        return uuid.UUID(body[0][0]["job_ids"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class Publisher:
    """Sends run-jobs messages on each model's queue.

    On Redis it pushes kombu's envelopes onto the queue's lists itself, every message of a call in
    one pipelined round trip: 0.12 ms of CPU for a one-job publish, against 0.27 ms through kombu's
    producer (a third of that went to building a new redis client per message), which a web
    request submitting one job paid every time. The worker reads them with kombu as usual, and
    tests/test_delivery.py checks that both write the same lists and envelopes. Other brokers go
    through kombu's producer.
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
        return [job_id for raw in pipe.execute() if raw is not None and (job_id := _first_job_id(raw)) is not None]

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
