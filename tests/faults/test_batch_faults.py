"""Batches survive a worker killed mid-batch, a loader killed mid-file and a gateway killed mid-upload
and mid-load: every line ends exactly once in the output or the error file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
from sqlalchemy import func, select, text

from db.engine import session_factory
from db.models import Batch, FileChunk, Job, StoredFile
from producer import Client
from producer.worker_process import WorkerProcess
from tests.faults.conftest import FAULT_ENV, RedisServer
from tests.helpers import unique_text, wait_until
from tests.live_gateway import gateway_process
from tests.test_cli import TEXTQ

KEY = "fault-key-" + uuid.uuid4().hex
FINAL = ("completed", "failed", "expired", "cancelled")


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


def _half_an_upload(base_url: str, content: bytes, half_sent: threading.Event, release: threading.Event,
                    outcome: list[str]) -> None:
    """POST /v1/files with a body that stops halfway (`half_sent`) until `release`; what came of it in `outcome`."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        half = len(content) // 2
        for start in range(0, half, 64 * 1024):  # far more than socket buffers hold: the gateway reads them
            yield content[start:min(start + 64 * 1024, half)]
        half_sent.set()
        release.wait(60)
        yield content[half:] + f"\r\n--{boundary}--\r\n".encode()

    try:
        response = httpx.post(f"{base_url}/v1/files", content=body(), timeout=60, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        outcome.append(f"HTTP {response.status_code}")
    except httpx.TransportError as exc:  # the gateway died under it
        outcome.append(type(exc).__name__)


def test_kill_9_the_gateway_mid_upload_and_mid_load(postgres_db: str, private_redis: RedisServer, tmp_path: Path) -> None:
    env = {**FAULT_ENV, "TEXTQ_DATABASE_URL": postgres_db, "TEXTQ_BROKER_URL": private_redis.url,
           "TEXTQ_WORKER_MODELS": "null", "TEXTQ_BATCH_LEASE_S": "2", "TEXTQ_BATCH_DRIVE_INTERVAL_S": "0.2",
           "TEXTQ_API_KEYS": KEY}
    count = 20_000
    content = "".join(json.dumps(_line(f"g-{i}", f"text {i}", "null")) + "\n" for i in range(count)).encode()
    sessions = session_factory(postgres_db)

    def stored(table: type[StoredFile] | type[FileChunk]) -> int:
        with sessions() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    with WorkerProcess(env=env):
        # 1. Killed while a file comes in: nothing of it is stored, and the client uploads it again.
        with gateway_process(env, tmp_path / "gateway-1.log") as (base_url, gateway):
            half_sent, release, outcome = threading.Event(), threading.Event(), list[str]()
            uploading = threading.Thread(target=_half_an_upload, args=(base_url, content, half_sent, release, outcome))
            uploading.start()
            assert half_sent.wait(60), "the upload did not get halfway"
            gateway.kill()
            gateway.wait(30)
            release.set()
            uploading.join(60)
        assert outcome and not outcome[0].startswith("HTTP"), outcome
        assert (stored(StoredFile), stored(FileChunk)) == (0, 0)

        # 2. Killed while its driver validates and enqueues the batch's lines, holding the batch's lease.
        with gateway_process(env, tmp_path / "gateway-2.log") as (base_url, gateway):
            oai = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=60)
            upload = oai.files.create(file=("big.jsonl", content), purpose="batch")
            batch_id = oai.batches.create(input_file_id=upload.id, endpoint="/v1/jobs", completion_window="24h").id

            def loading() -> bool:
                with sessions() as session:
                    return bool(session.scalar(select(Batch.loaded_lines).where(Batch.id == batch_id)))

            wait_until(loading, timeout=60, what="the gateway to enqueue its first lines")
            gateway.kill()
            gateway.wait(30)
        with sessions() as session:
            batch = session.scalars(select(Batch).where(Batch.id == batch_id)).one()
            assert not batch.loaded and 0 < batch.loaded_lines < count and batch.lease_owner is not None

        # 3. A new gateway takes the lease over once it runs out, goes on after the last line enqueued, finishes.
        with gateway_process(env, tmp_path / "gateway-3.log") as (base_url, _):
            oai = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=60)
            wait_until(lambda: oai.batches.retrieve(batch_id).status in FINAL, timeout=180, what="the batch to end")
            done = oai.batches.retrieve(batch_id)
            lines = [json.loads(x) for file_id in (done.output_file_id, done.error_file_id) if file_id
                     for x in oai.files.content(file_id).content.splitlines()]
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (count, count, 0)
    seen = Counter(str(x["custom_id"]) for x in lines)
    assert len(seen) == count and set(seen.values()) == {1}
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id)) == count
        # A loader of this many lines has the planner re-sample the jobs table (PostgreSQL; db/batches.py).
        assert session.scalar(text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'jobs'"))
    assert stored(StoredFile) == 2  # the input and the output file: the half upload left nothing behind
