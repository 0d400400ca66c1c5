"""The wire format: everything textq puts on Redis and reads back, built and parsed here only.

A message is a Celery task message (protocol 2, task `textq.run_jobs`) whose one argument is a
`JobMessage`; on Redis it sits in the JSON envelope kombu's Redis transport uses, on one list per
priority step. The producer builds envelopes itself (`task_message`, `redis_envelope`,
`redis_list`); the worker reads them through kombu and `parse_message`; the sweeper peeks at them
with `first_job_id`. tests/test_wire.py checks that kombu agrees.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from bisect import bisect_right
from typing import Any

from kombu.message import Message
from kombu.transport.redis import Channel as RedisChannel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.contract import field_errors
from producer.errors import TextqError

__all__ = [
    "JSON_CONTENT_TYPE",
    "MAX_BODY_BYTES",
    "MAX_JOBS_PER_MESSAGE",
    "PRIORITY_STEPS",
    "RUN_JOBS_TASK",
    "JobMessage",
    "MalformedMessageError",
    "first_job_id",
    "parse_message",
    "redis_envelope",
    "redis_list",
    "task_message",
]

RUN_JOBS_TASK = "textq.run_jobs"
MAX_JOBS_PER_MESSAGE = 1024
# Redis emulates priorities with one list per step; lower number = served first.
PRIORITY_STEPS = [0, 3, 6, 9]
JSON_CONTENT_TYPE = "application/json"
# Far above the largest valid body (~45 KB for MAX_JOBS_PER_MESSAGE ids): a bigger one is refused unparsed.
MAX_BODY_BYTES = 1 << 20


class JobMessage(BaseModel):
    """The Celery message body: which jobs to run. Everything else is read from the jobs table."""

    model_config = ConfigDict(extra="forbid")

    model: str
    job_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_JOBS_PER_MESSAGE)


class MalformedMessageError(TextqError, ValueError):
    """A message on a textq queue is not a textq message; it is dropped (its jobs, if any, stay in the table)."""


def task_message(message: JobMessage) -> tuple[list[Any], dict[str, Any]]:
    """A Celery task message (protocol 2) that runs `message`: body and headers.

    Built here, not by `Celery.send_task`, whose routing, reprs and signals textq does not use.
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
    """The Redis list kombu keeps a queue's messages of `priority` in (the lowest step under the queue's own name)."""
    step = PRIORITY_STEPS[bisect_right(PRIORITY_STEPS, min(max(priority, 0), 9)) - 1]
    return f"{queue}{RedisChannel.sep}{step}" if step else queue


def redis_envelope(queue: str, priority: int, body: list[Any], headers: dict[str, Any]) -> str:
    """The JSON envelope kombu's Redis transport stores for a JSON message (body base64-encoded)."""
    payload = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps({
        "body": payload, "content-encoding": "utf-8", "content-type": JSON_CONTENT_TYPE, "headers": headers,
        "properties": {
            "correlation_id": headers["id"], "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    })


def first_job_id(envelope: bytes) -> uuid.UUID | None:
    """The first job id in an envelope as `redis_envelope` writes it (None for any other bytes)."""
    try:
        body = json.loads(base64.b64decode(json.loads(envelope)["body"]))
        return uuid.UUID(body[0][0]["job_ids"][0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return None


def parse_message(message: Message) -> JobMessage:
    """The job message in a task message that kombu read off a textq queue.

    Raises MalformedMessageError, saying why in one line, for anything else. The body is decoded
    here as JSON whatever the consumer accepts: no other content type is ever deserialized.
    """
    headers = message.headers
    task = headers.get("task") if isinstance(headers, dict) else None
    if task != RUN_JOBS_TASK:
        raise MalformedMessageError(f"task {task!r:.100} is not {RUN_JOBS_TASK}")
    if message.content_type != JSON_CONTENT_TYPE:
        raise MalformedMessageError(f"content type {message.content_type!r:.100} is not {JSON_CONTENT_TYPE}")
    raw = message.body
    if not isinstance(raw, bytes | str):
        raise MalformedMessageError(f"the body is {type(raw).__name__}, not JSON text")
    if len(raw) > MAX_BODY_BYTES:
        raise MalformedMessageError(f"the body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedMessageError(f"the body is not JSON: {exc!r:.200}") from None
    args = body[0] if isinstance(body, list) and body else None
    if not isinstance(args, list) or len(args) != 1:
        raise MalformedMessageError(f"expected one argument, the job message; got {args!r:.200}")
    try:
        return JobMessage.model_validate(args[0])
    except ValidationError as exc:
        reasons = "; ".join(str(error) for error in field_errors(exc))
        raise MalformedMessageError(f"not a job message: {reasons:.300}") from None
