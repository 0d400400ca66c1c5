"""The wire format (producer/wire.py): kombu writes and reads what textq writes, and the parser
refuses, with a one-line reason, anything that is not a textq message."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection, Producer
from kombu.message import Message

from producer.broker import broker_config
from producer.registry import queue_name
from producer.settings import ProducerSettings
from producer.wire import (
    JSON_CONTENT_TYPE,
    MAX_BODY_BYTES,
    MAX_JOBS_PER_MESSAGE,
    RUN_JOBS_TASK,
    JobMessage,
    MalformedMessageError,
    first_job_id,
    parse_message,
    redis_envelope,
    redis_list,
    task_message,
)
from tests.conftest import Backend
from tests.helpers import publisher, unique_text


def test_the_publisher_writes_the_lists_and_envelopes_kombu_writes(backend: Backend) -> None:
    """The publisher pushes kombu's Redis envelopes itself; kombu must agree on where and what."""
    model = unique_text("compat")
    queue = queue_name(model)
    conf = broker_config(ProducerSettings(broker_url=backend.broker_url))
    r = redis.Redis.from_url(backend.broker_url)
    ours_pub = publisher(backend)
    with Connection(backend.broker_url, transport_options=conf["broker_transport_options"]) as conn:
        kombu_producer = Producer(conn.default_channel)
        for priority in (9, 0, 4):
            ours_ids = [uuid.uuid4()]
            ours_pub.publish(model, priority, ours_ids)
            body, headers = task_message(JobMessage(model=model, job_ids=[uuid.uuid4()]))
            kombu_producer.publish(body, exchange="", routing_key=queue, priority=priority, serializer="json",
                                   headers=headers, correlation_id=headers["id"])
            # Both landed on the same list: the one for this priority step.
            key = redis_list(queue, priority)
            kombu_raw, ours_raw = (json.loads(m) for m in r.lrange(key, 0, -1))
            assert shape(ours_raw) == shape(kombu_raw)
            # kombu reads ours back as the message we sent.
            message = conn.default_channel.basic_get(queue, no_ack=True)
            if message.properties["correlation_id"] == kombu_raw["properties"]["correlation_id"]:
                message = conn.default_channel.basic_get(queue, no_ack=True)
            assert parse_message(message).job_ids == ours_ids
            r.delete(key)
        # kombu serves lists by priority step: what is published at 0 is read first, and a message
        # published to the front of its list is read before those already waiting there.
        def read_next() -> list[uuid.UUID]:
            return parse_message(conn.default_channel.basic_get(queue, no_ack=True)).job_ids

        low, first, second, ahead = ([uuid.uuid4()] for _ in range(4))
        ours_pub.publish(model, 9, low)
        ours_pub.publish(model, 0, first)
        ours_pub.publish(model, 0, second)
        assert ours_pub.next_in_line(model) == [first[0], low[0]]  # one per priority list that holds messages
        ours_pub.publish_jobs([(ahead[0], model, 0)], front=True)
        assert [read_next(), read_next(), read_next(), read_next()] == [ahead, first, second, low]
        assert ours_pub.next_in_line(model) == []
    ours_pub.close()
    r.close()


def shape(envelope: dict[str, Any]) -> dict[str, Any]:
    """An envelope with its per-message ids and task arguments blanked out."""
    properties = {**envelope["properties"], "correlation_id": "-", "delivery_tag": "-"}
    headers = {**envelope["headers"], "id": "-", "root_id": "-"}
    return {**envelope, "body": "-", "headers": headers, "properties": properties}


@pytest.mark.parametrize(
    ("priority", "step"), [(-1, 0), (0, 0), (2, 0), (3, 3), (5, 3), (6, 6), (8, 6), (9, 9), (12, 9)]
)
def test_each_priority_lands_on_the_list_of_its_step(priority: int, step: int) -> None:
    assert redis_list("textq.m", priority) == ("textq.m" if step == 0 else f"textq.m\x06\x16{step}")


def test_first_job_id_reads_an_envelope_and_nothing_else() -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    envelope = redis_envelope("textq.m", 5, *task_message(JobMessage(model="m", job_ids=ids)))
    assert first_job_id(envelope.encode()) == ids[0]
    garbage = [b"", b"not json", b"[]", b"null", b'{"body": 5}', b'{"body": "!!"}', b"[" * 100_000,
               json.dumps({"body": base64.b64encode(b"[[{\"job_ids\": [7]}]]").decode()}).encode()]
    assert [first_job_id(raw) for raw in garbage] == [None] * len(garbage)


def message(body: Any, *, task: Any = RUN_JOBS_TASK, content_type: str | None = JSON_CONTENT_TYPE,
            headers: Any = None) -> Message:
    """A task message as kombu hands it to the consumer (body already base64-decoded)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(body=raw, content_type=content_type, headers={"task": task} if headers is None else headers)


def args_of(job_message: Any) -> list[Any]:
    return [[job_message], {}, {}]


SOME_ID = str(uuid.uuid4())


def test_parse_message_reads_what_task_message_builds() -> None:
    sent = JobMessage(model="m", job_ids=[uuid.uuid4() for _ in range(MAX_JOBS_PER_MESSAGE)])
    body, headers = task_message(sent)
    assert parse_message(message(body, headers=headers)) == sent


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (message(args_of({"model": "m", "job_ids": [SOME_ID]}), task="other.task"), "task 'other.task' is not textq.run_jobs"),
        (message(args_of({"model": "m", "job_ids": [SOME_ID]}), headers={}), "task None is not"),
        (message(args_of({"model": "m", "job_ids": [SOME_ID]}), content_type="application/x-python-serialize"),
         "content type 'application/x-python-serialize' is not application/json"),
        (message(args_of({"model": "m", "job_ids": [SOME_ID]}), content_type=None), "content type None"),
        (message(b"\xff\xfe not json"), "the body is not JSON"),
        (message(b"[" * 100_000), "the body is not JSON"),
        (message(b" " * (MAX_BODY_BYTES + 1)), f"the limit is {MAX_BODY_BYTES:,}"),
        (message({"not": "a list"}), "expected one argument, the job message; got None"),
        (message([]), "expected one argument"),
        (message([[{"model": "m", "job_ids": [SOME_ID]}, "extra"], {}, {}]), "expected one argument"),
        (message(args_of("garbage")), "not a job message: request: Input should be a valid dictionary"),
        (message(args_of({"model": "m", "job_ids": []})), "job_ids: List should have at least 1 item"),
        (message(args_of({"model": "m", "job_ids": ["not-a-uuid"]})), "job_ids.0: Input should be a valid UUID"),
        (message(args_of({"model": "m", "job_ids": [SOME_ID] * (MAX_JOBS_PER_MESSAGE + 1)})),
         f"job_ids: List should have at most {MAX_JOBS_PER_MESSAGE} items"),
        (message(args_of({"job_ids": [SOME_ID]})), "model: Field required"),
        (message(args_of({"model": "m", "job_ids": [SOME_ID], "extra": 1})), "extra: Extra inputs are not permitted"),
    ],
)
def test_parse_message_refuses_anything_else_in_one_line(bad: Message, reason: str) -> None:
    with pytest.raises(MalformedMessageError) as refused:
        parse_message(bad)
    assert reason in str(refused.value)
    assert "\n" not in str(refused.value)
