"""Any bytes on a model queue, pushed around the producer: each that is not a textq message is dropped
with one log line, and the worker goes on serving (issue #12)."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from typing import Any

import redis

from producer import Client
from producer.registry import queue_name
from producer.wire import MAX_JOBS_PER_MESSAGE, JobMessage, redis_envelope, redis_list, task_message
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import unique_text, wait_until

QUEUE = queue_name("echo")
DROPPED = "dropped a message"


def envelope(**changes: Any) -> dict[str, Any]:
    """A valid envelope for the echo model, with top-level keys replaced (or removed, for None)."""
    raw = json.loads(redis_envelope(QUEUE, 0, *task_message(JobMessage(model="echo", job_ids=[uuid.uuid4()]))))
    raw.update(changes)
    return {key: value for key, value in raw.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def with_body(body: Any) -> dict[str, Any]:
    return envelope(body=b64(json.dumps(body).encode()))


def job_args(job_message: Any) -> list[Any]:
    return [[job_message], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def malformed() -> list[bytes]:
    properties = envelope()["properties"]
    some_id = str(uuid.uuid4())
    shapes: list[Any] = [
        b"not json",
        b"\xff\xfe\x80 not utf-8 \xc3\x28",
        b"",
        b"[1, 2, 3]",
        b"42",
        b"null",
        b'"a string"',
        b"[" * 100_000,  # nested deeper than the JSON parser recurses
        b"1" * 5_000,  # an integer with more digits than Python converts
        envelope(properties=None),
        envelope(body=None),
        envelope(headers=None),
        envelope(**{"content-type": None}),
        envelope(properties=[1, 2]),
        envelope(properties={k: v for k, v in properties.items() if k != "delivery_tag"}),
        envelope(properties={**properties, "body_encoding": "rot13"}),
        envelope(headers=["not", "a", "dict"]),
        envelope(headers={**envelope()["headers"], "compression": "application/x-gzip"}),
        envelope(body="!!! not base64 !!!"),
        envelope(body=b64(b"\xff\xfe not json")),
        envelope(body={"__type__": "decimal", "__value__": "not a number"}),  # kombu's JSON type hook raises
        envelope(body="\ud800", properties={**properties, "body_encoding": None}),  # a lone surrogate
        envelope(body=b64(pickle.dumps(job_args({"model": "echo", "job_ids": [some_id]}))),
                 **{"content-type": "application/x-python-serialize", "content-encoding": "binary"}),
        envelope(headers={**envelope()["headers"], "task": "someone.elses_task"}),
        with_body({"not": "a list"}),
        with_body([]),
        with_body([["garbage"], {}, {}]),
        with_body([[{"model": "echo", "job_ids": [some_id]}, "extra"], {}, {}]),
        with_body(job_args({"model": "echo", "job_ids": "not-a-list"})),
        with_body(job_args({"model": "echo", "job_ids": []})),
        with_body(job_args({"model": "echo", "job_ids": ["not-a-uuid"]})),
        with_body(job_args({"model": "echo", "job_ids": [some_id] * (MAX_JOBS_PER_MESSAGE + 1)})),
        with_body(job_args({"model": "echo", "job_ids": [some_id], "extra": 1})),
        with_body(job_args({"model": "no-such-model", "job_ids": [some_id]})),
        with_body(job_args({"model": "echo", "job_ids": [some_id] * 300_000})),  # ~11 MB
    ]
    return [shape if isinstance(shape, bytes) else json.dumps(shape).encode() for shape in shapes]


def test_malformed_bytes_on_a_model_queue_are_dropped_and_the_worker_goes_on(
    worker: WorkerProcess, client: Client, backend: Backend
) -> None:
    log_start = len(worker.log())
    messages = malformed()
    broker = redis.Redis.from_url(backend.broker_url)
    try:
        # On the queue's own list (priority 0) and on a priority sub-list, read after it.
        for i, raw in enumerate(messages):
            broker.lpush(redis_list(QUEUE, 0 if i % 2 else 9), raw)
    finally:
        broker.close()
    # Published at priority 9 after them: read last, once every malformed message was.
    view = client.wait(client.classify(unique_text("after-malformed"), model="echo", priority=9).id, timeout=60)
    assert view.status == "succeeded"
    assert worker.alive()
    wait_until(lambda: worker.log()[log_start:].count(DROPPED) >= len(messages), timeout=10, what="a line per message")
    new_log = worker.log()[log_start:]
    assert new_log.count(DROPPED) == len(messages)
    assert "Traceback" not in new_log
    assert "Unrecoverable error" not in new_log
    assert "Connection to broker lost" not in new_log  # kombu's answer to a KeyError: a reconnect, not a drop
