"""Workers that die, drain, or get the same message twice: nothing lost, nothing done twice."""

from __future__ import annotations

import time

import pytest

from producer import Client
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.faults.conftest import FAULT_ENV, RedisServer
from tests.faults.report import tally
from tests.helpers import computed_texts, publisher, rows, unique_text, wait_until
from tests.runners import POISON


def _env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    return {**FAULT_ENV, "TEXTQ_DATABASE_URL": database_url, "TEXTQ_BROKER_URL": broker_url, **extra}


def _statuses(client: Client, ids: list) -> list[str]:  # type: ignore[type-arg]
    return [v.status for v in client.get_many(ids)]


def test_kill_9_mid_batch_then_a_new_worker_finishes_every_job_once(postgres_db: str, private_redis: RedisServer) -> None:
    env = _env(postgres_db, private_redis.url)
    texts = [unique_text("kill") for _ in range(40)]
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client:
        first = WorkerProcess(env=env).start()
        jobs = client.submit_many([{"text": t, "model": "slow"} for t in texts])
        ids = [j.id for j in jobs]
        wait_until(lambda: {"running", "succeeded"} <= set(_statuses(client, ids)), what="a batch in flight after one finished")
        first.kill()
        assert "running" in _statuses(client, ids)  # killed mid-batch: claimed jobs left behind
        with WorkerProcess(env=env):
            views = client.wait_many(ids, timeout=120)
        counts = tally(postgres_db, views, texts, computed_texts("slow"))
    assert counts == {"submitted": 40, "succeeded": 40, "failed": 0, "lost": 0, "duplicated": 0}
    assert [v.output["label"] for v in views] == [t.upper() for t in texts]  # same as a run without faults
    assert max(v.attempts for v in views) == 2


def test_sigterm_drains_the_batch_in_flight_and_exits_cleanly(postgres_db: str, private_redis: RedisServer) -> None:
    env = _env(postgres_db, private_redis.url)
    texts = [unique_text("drain") for _ in range(40)]
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client:
        worker = WorkerProcess(env=env).start()
        ids = [j.id for j in client.submit_many([{"text": t, "model": "slow"} for t in texts])]
        wait_until(lambda: "running" in _statuses(client, ids), what="a running batch")
        assert worker.stop(timeout=60) == 0
        after_stop = client.get_many(ids)
        assert "running" not in [v.status for v in after_stop]  # nothing half-done
        drained = [v for v in after_stop if v.status == "succeeded"]
        assert drained, "the batch in flight was finished and written"
        with WorkerProcess(env=env):
            views = client.wait_many(ids, timeout=120)
        counts = tally(postgres_db, views, texts, computed_texts("slow"))
    assert counts == {"submitted": 40, "succeeded": 40, "failed": 0, "lost": 0, "duplicated": 0}
    assert all(v.attempts == 1 for v in views)


def test_poison_job_fails_after_max_attempts_and_the_others_succeed(postgres_db: str, private_redis: RedisServer) -> None:
    env = _env(postgres_db, private_redis.url, TEXTQ_MAX_ATTEMPTS="3")
    texts = [unique_text("innocent") for _ in range(10)] + [f"{POISON} {unique_text()}"]
    deaths = 0
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client:
        ids = [j.id for j in client.submit_many([{"text": t, "model": "poison"} for t in texts])]
        deadline = time.monotonic() + 180
        while not all(v.done for v in client.get_many(ids)):
            assert time.monotonic() < deadline, _statuses(client, ids)
            worker = WorkerProcess(env=env).start()
            while worker.alive() and not all(v.done for v in client.get_many(ids)):
                time.sleep(0.2)
            deaths += not worker.alive()
            worker.stop()
        views = client.get_many(ids)
        counts = tally(postgres_db, views, texts, computed_texts("poison"))
    assert counts == {"submitted": 11, "succeeded": 10, "failed": 1, "lost": 0, "duplicated": 0}
    assert views[-1].error_type == "MaxAttemptsExceeded"
    assert views[-1].attempts == 3
    assert deaths == 3  # the poison job killed a worker on each of its attempts, and no more


@pytest.mark.parametrize("copies", [2])
def test_same_message_on_two_workers_is_computed_and_written_once(
    postgres_db: str, private_redis: RedisServer, copies: int
) -> None:
    env = _env(postgres_db, private_redis.url)
    texts = [unique_text("twice") for _ in range(12)]
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client:
        workers = [WorkerProcess(env=env).start() for _ in range(copies)]
        backend = Backend("fault", postgres_db, private_redis.url)
        # Insert rows without publishing, then deliver the very same message once per worker.
        from db import store
        from db.engine import session_factory

        with session_factory(postgres_db).begin() as session:
            ids = store.create_jobs(session, jobs=[store.NewJob(model="slow", task="classify", input={"text": t}) for t in texts])
        for _ in range(copies):
            publisher(backend).publish("slow", 5, ids)
        views = client.wait_many(ids, timeout=60)
        for worker in workers:
            worker.stop()
        counts = tally(postgres_db, views, texts, computed_texts("slow"))
    assert counts == {"submitted": 12, "succeeded": 12, "failed": 0, "lost": 0, "duplicated": 0}
    assert all(computed_texts("slow")[t] == 1 for t in texts)
    assert all(r.attempts == 1 for r in rows(backend, ids))


def test_jobs_whose_message_was_lost_run_before_a_busy_queue_drains(postgres_db: str, private_redis: RedisServer) -> None:
    """Ids a dead worker held (or any message lost) leave queued rows behind. While the queue still
    holds a backlog, the sweeper re-publishes them ahead of it instead of waiting for it to empty."""
    from db import store
    from db.engine import session_factory

    env = _env(postgres_db, private_redis.url)
    with session_factory(postgres_db).begin() as session:  # rows whose message never arrives
        lost = store.create_jobs(session, jobs=[store.NewJob(model="slow", task="classify", input={"text": unique_text("lost")})
                                                for _ in range(4)])
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client:
        # A backlog of one message per job: 60 one-second batches of 4, most of it waiting on Redis.
        backlog = [client.classify(unique_text("backlog"), model="slow").id for _ in range(60)]
        with WorkerProcess(env=env):
            client.wait_many(lost, timeout=60)
            still_waiting = sum(not v.done for v in client.get_many(backlog))
            assert still_waiting >= 20, f"the lost jobs ran only once the backlog was nearly done ({still_waiting} left)"
            views = client.wait_many(backlog, timeout=120)
    assert all(v.status == "succeeded" for v in views)
