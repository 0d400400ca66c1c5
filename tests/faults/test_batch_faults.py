"""Batches survive a worker killed mid-batch and a loader killed mid-file: every line ends exactly
once in the output or the error file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from db.engine import session_factory
from db.models import Batch
from producer import Client
from producer.worker_process import WorkerProcess
from tests.faults.conftest import FAULT_ENV, RedisServer
from tests.helpers import unique_text, wait_until
from tests.test_cli import TEXTQ


def _line(custom_id: str, text: str, model: str) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/jobs", "body": {"text": text, "model": model}}


def _each_once(client: Client, batch_id: str) -> Counter[str]:
    return Counter(str(r["custom_id"]) for r in client.batches.results(batch_id))


def test_kill_9_the_worker_mid_batch(postgres_db: str, private_redis: RedisServer) -> None:
    env = {**FAULT_ENV, "TEXTQ_DATABASE_URL": postgres_db, "TEXTQ_BROKER_URL": private_redis.url}
    lines = [_line(f"k-{i}", unique_text("kill"), "slow") for i in range(40)]
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client:
        first = WorkerProcess(env=env).start()
        batch = client.submit_batch(lines)

        def in_flight() -> bool:
            counts = client.batches.get(batch.id).request_counts
            return 0 < counts.completed < counts.total

        wait_until(in_flight, what="a batch half done")
        first.kill()
        with WorkerProcess(env=env):
            done = client.batches.wait(batch.id, timeout=120, poll_interval=0.2)
        seen = _each_once(client, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (40, 40, 0)
    assert seen == Counter(str(x["custom_id"]) for x in lines)


def test_kill_9_the_loader_mid_file_and_another_process_resumes(postgres_db: str, private_redis: RedisServer,
                                                                 tmp_path: Path) -> None:
    env = {**FAULT_ENV, "TEXTQ_DATABASE_URL": postgres_db, "TEXTQ_BROKER_URL": private_redis.url,
           "TEXTQ_WORKER_MODELS": "null", "TEXTQ_BATCH_LEASE_S": "2"}
    path = tmp_path / "big.jsonl"
    count = 20_000
    path.write_text("".join(json.dumps(_line(f"n-{i}", f"text {i}", "null")) + "\n" for i in range(count)))
    sessions = session_factory(postgres_db)

    def loading() -> bool:
        with sessions() as session:
            return any(b.loaded_lines > 0 for b in session.scalars(select(Batch)))

    loader = subprocess.Popen([*TEXTQ, "batch", "submit", str(path)], env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(loading, timeout=60, what="the loader to enqueue its first lines")
    finally:
        loader.send_signal(signal.SIGKILL)
        loader.wait()
    with sessions() as session:
        batch = session.scalars(select(Batch)).one()
        assert not batch.loaded and 0 < batch.loaded_lines < count  # killed mid-file
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client, WorkerProcess(env=env):
        done = client.batches.wait(batch.id, timeout=180, poll_interval=0.5)  # takes the lease over once it runs out
        seen = _each_once(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == count
    assert len(seen) == count and set(seen.values()) == {1}
