"""Redis flushed or restarted, PostgreSQL restarted, mid-run: the jobs table brings every job home."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from db import upgrade
from db.engine import shared_engine
from producer import Client
from producer.worker_process import WorkerProcess
from tests.faults.conftest import FAULT_ENV, PostgresServer, RedisServer
from tests.faults.report import tally
from tests.helpers import computed_texts, unique_text, wait_until


@pytest.fixture()
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    shared_engine.cache_clear()
    server.remove()


def _run_with_fault(database_url: str, redis_server: RedisServer, fault: object, n: int = 48) -> str:
    """Run `n` jobs, inject `fault` after the first results; return the worker's log."""
    env = {**FAULT_ENV, "TEXTQ_DATABASE_URL": database_url, "TEXTQ_BROKER_URL": redis_server.url}
    texts = [unique_text("svc") for _ in range(n)]
    with Client(database_url=database_url, broker_url=redis_server.url) as client, WorkerProcess(env=env) as w:
        ids = [j.id for j in client.submit_many([{"text": t, "model": "slow"} for t in texts])]
        wait_until(lambda: any(v.status == "succeeded" for v in client.get_many(ids)), what="first results")
        fault()  # type: ignore[operator]
        views = client.wait_many(ids, timeout=180)
        assert w.alive()
        counts = tally(database_url, views, texts, computed_texts("slow"))
        log = w.log()
    assert counts == {"submitted": n, "succeeded": n, "failed": 0, "lost": 0, "duplicated": 0}
    assert [v.output["label"] for v in views] == [t.upper() for t in texts]
    return log


def test_flushall_mid_run_the_sweeper_recovers_every_job(postgres_db: str, private_redis: RedisServer) -> None:
    # More jobs than a worker holds in hand (3 windows of 4 batches of 4 for `slow`, worker/batcher.py), so
    # the flush loses messages that only the sweeper can bring back.
    log = _run_with_fault(postgres_db, private_redis, lambda: redis.Redis(port=private_redis.port).flushall(), n=96)
    assert "sweeper re-published" in log


def test_redis_restart_without_persistence_mid_run(postgres_db: str, private_redis: RedisServer) -> None:
    _run_with_fault(postgres_db, private_redis, private_redis.restart)


def test_postgres_restart_mid_run_workers_retry_their_writes(
    private_postgres: PostgresServer, private_redis: RedisServer
) -> None:
    upgrade(private_postgres.url)
    log = _run_with_fault(private_postgres.url, private_redis, private_postgres.restart)
    assert "retry 1/" in log  # the outage was seen by the worker and ridden out
