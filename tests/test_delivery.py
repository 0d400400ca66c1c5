"""What reaches the worker around the producer: redelivered, malformed, hostile and bad-payload messages."""

from __future__ import annotations

import pickle
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import redis
from kombu import Connection, Exchange, Producer

from db import store, sweeps
from db.engine import session_factory
from db.models import Job, utcnow
from producer import Client
from producer.broker import model_queue
from producer.registry import queue_name
from producer.wire import RUN_JOBS_TASK
from producer.worker_process import WorkerProcess
from tests.conftest import TEST_ROOT, Backend
from tests.helpers import computed_texts, insert_raw_job, publisher, rows, unique_text


def test_redelivered_message_for_a_finished_job_changes_nothing(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    text = unique_text("redeliver")
    job = client.wait(client.classify(text, model="echo").id, timeout=30)
    assert job.status == "succeeded"
    before = rows(backend, [job.id])[0]
    publisher(backend).publish("echo", 5, [job.id])  # the same message, delivered again
    follower = client.wait(client.classify(unique_text("after"), model="echo").id, timeout=30)
    assert follower.status == "succeeded"
    after = rows(backend, [job.id])[0]
    assert (after.status, after.attempts, after.finished_at, after.output) == (
        before.status,
        before.attempts,
        before.finished_at,
        before.output,
    )
    assert computed_texts("echo")[text] == 1


def test_row_with_bad_input_fails_alone_with_a_readable_error(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    bad_type = insert_raw_job(backend, model="echo", task="classify", input={"text": 123})
    bad_rule = insert_raw_job(backend, model="sentiment", task="classify", input={"text": "ok", "labels": ["a"]})
    empty = insert_raw_job(backend, model="summarize", task="summarize", input={"text": "  ", "max_sentences": 2})
    good = client.classify(unique_text("good"), model="echo")
    pub = publisher(backend)
    pub.publish("echo", 5, [bad_type, good.id])
    pub.publish("sentiment", 5, [bad_rule])
    pub.publish("summarize", 5, [empty])
    views = client.wait_many([bad_type, bad_rule, empty, good.id], timeout=60)
    assert [v.status for v in views] == ["failed", "failed", "failed", "succeeded"]
    assert views[0].error_type == "InvalidJobError"
    assert "input.text: Input should be a valid string" in (views[0].error_message or "")
    assert "fixed labels" in (views[1].error_message or "")
    assert "input.text: must not be empty" in (views[2].error_message or "")


def test_malformed_messages_are_dropped_and_the_worker_keeps_serving(
    worker: WorkerProcess, client: Client, backend: Backend
) -> None:
    app = publisher(backend).app
    for args in (
        ["garbage"],
        [{"job_ids": "not-a-list", "model": "echo"}],
        [{"job_ids": [], "model": "echo"}],
        [],
        [{"job_ids": ["not-a-uuid"], "model": "echo"}],
        [{"job_ids": [str(uuid.uuid4())], "model": "echo"}],
        [{"job_ids": [str(uuid.uuid4())], "model": "no-such-model"}],
    ):
        app.send_task(RUN_JOBS_TASK, args=args, queue=model_queue("echo"))
    app.send_task("someone.elses_task", args=[{"job_ids": [str(uuid.uuid4())], "model": "echo"}], queue=model_queue("echo"))
    view = client.wait(client.classify(unique_text("still-up"), model="echo").id, timeout=30)
    assert view.status == "succeeded"
    assert worker.alive()


def test_consumed_messages_leave_nothing_for_redis_to_redeliver(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    # Messages are consumed without acks (the jobs table keeps jobs safe): none may linger in
    # kombu's unacked hash, from where it would be restored and delivered again.
    jobs = client.submit_many([{"text": unique_text("noack"), "model": "echo"} for _ in range(5)])
    assert {v.status for v in client.wait_many([j.id for j in jobs], timeout=30)} == {"succeeded"}
    broker = redis.Redis.from_url(backend.broker_url)
    try:
        assert (broker.hlen("unacked"), broker.zcard("unacked_index")) == (0, 0)
    finally:
        broker.close()


def test_pickle_message_is_rejected_and_never_unpickled(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    marker = TEST_ROOT / f"pwned-{uuid.uuid4().hex}"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))  # runs on unpickling

    body = pickle.dumps(((Exploit(),), {}, {}))
    with Connection(backend.broker_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            routing_key=queue_name("echo"),
            exchange=Exchange(queue_name("echo"), type="direct"),
            serializer=None,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": RUN_JOBS_TASK, "id": str(uuid.uuid4()), "argsrepr": "", "kwargsrepr": ""},
        )
    view = client.wait(client.classify(unique_text("after-pickle"), model="echo").id, timeout=30)
    assert view.status == "succeeded"
    assert not marker.exists()
    assert worker.alive()


def test_a_model_error_fails_only_its_own_job(worker: WorkerProcess, client: Client) -> None:
    texts = [unique_text("ok") for _ in range(7)] + ["this one is BAD"]
    jobs = client.submit_many([{"text": t, "model": "failing"} for t in texts])
    views = client.wait_many([j.id for j in jobs], timeout=30)
    assert [v.status for v in views] == ["succeeded"] * 7 + ["failed"]
    assert views[-1].error_type == "ValueError"
    assert views[-1].error_message == "model cannot handle this input"
    assert [v.output["label"] for v in views[:7]] == [t.upper() for t in texts[:7]]


def test_an_input_the_runner_cannot_size_fails_alone_and_the_worker_goes_on(worker: WorkerProcess, client: Client) -> None:
    texts = [unique_text("ok") for _ in range(5)] + [unique_text("UNSIZABLE")]
    views = client.wait_many([j.id for j in client.submit_many([{"text": t, "model": "failing"} for t in texts])], timeout=30)
    assert [v.status for v in views] == ["succeeded"] * 5 + ["failed"]
    assert views[-1].error_message == "cannot estimate the length of this input"
    later = client.wait(client.classify(unique_text("later"), model="failing").id, timeout=30)
    assert later.status == "succeeded"


def test_out_of_memory_batches_are_split_until_they_fit(worker: WorkerProcess, client: Client) -> None:
    texts = [unique_text("fit") for _ in range(16)]
    jobs = client.submit_many([{"text": t, "model": "hungry"} for t in texts])
    views = client.wait_many([j.id for j in jobs], timeout=30)
    assert [v.status for v in views] == ["succeeded"] * 16
    assert [v.output["label"] for v in views] == [t.upper() for t in texts]


def test_out_of_memory_alone_is_retried_then_fails_after_max_attempts(worker: WorkerProcess, client: Client) -> None:
    view = client.wait(client.classify("HUGE input", model="hungry").id, timeout=90)
    assert view.status == "failed"
    assert view.error_type == "MaxAttemptsExceeded"
    assert view.attempts == 3


def test_the_sweeper_picks_queued_jobs_published_before_the_message_read_next(isolated_backend: Backend) -> None:
    """A queue is first in, first out: a job published before the message at its head has none waiting."""
    model = unique_text("sweep")
    now = utcnow()
    ages = {"lost": 600, "head": 300, "behind": 120}  # seconds since each was published
    with session_factory(isolated_backend.database_url).begin() as session:
        new_jobs = [store.NewJob(model=model, task="classify", input={"text": name}) for name in ages]
        ids = dict(zip(ages, store.create_jobs(session, jobs=new_jobs), strict=True))
        for name, age in ages.items():
            session.get_one(Job, ids[name]).published_at = now - timedelta(seconds=age)

    def picked(waiting_since: dict[str, datetime | None] | None) -> set[str]:
        with session_factory(isolated_backend.database_url).begin() as session:
            found = {job_id for job_id, _, _ in sweeps.jobs_to_republish(
                session, stale_after=timedelta(seconds=60), limit=100, waiting_since=waiting_since)}
            session.rollback()  # leave published_at as it was for the next question
        return {name for name, job_id in ids.items() if job_id in found}

    with session_factory(isolated_backend.database_url)() as session:
        head = sweeps.earliest_published(session, ids=[ids["head"], uuid.uuid4()])
    assert head is not None and abs((head - (now - timedelta(seconds=300))).total_seconds()) < 1e-3
    assert picked({model: head}) == {"lost"}  # "head" and "behind" still have their messages
    assert picked(None) == {"lost", "head", "behind"}  # an empty queue: every stale job
    assert picked({model: None}) == set()  # a queue that cannot be peeked at: left alone
