"""Long polls (`GET /v1/jobs/{id}?wait=S`) against a real gateway process: hundreds at once each
answer within S, a finished job answers at once, and a caller that goes away leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest
import redis
from fastapi.testclient import TestClient

from producer import Client
from producer.gateway import GatewaySettings, create_app
from producer.notify import FinishNotifier, channel, redis_for
from producer.worker_process import WorkerProcess
from tests import live_gateway
from tests.conftest import Backend
from tests.helpers import unique_text, wait_until

KEY = "wait-key-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {KEY}"}
MARGIN_S = 0.5


def gateway_process(backend: Backend, tmp_path: Path, **env: str) -> AbstractContextManager[tuple[str, psutil.Process]]:
    """`textq api` over `backend` with this module's key: (base URL, its process)."""
    return live_gateway.gateway_process({**backend.env, "TEXTQ_API_KEYS": KEY, **env}, tmp_path / "gateway.log")


def _submit_queued(backend: Backend, count: int) -> list[str]:
    """Jobs that stay queued: no worker serves the isolated backend."""
    with Client(database_url=backend.database_url, broker_url=backend.broker_url) as client:
        return [str(v.id) for v in client.submit_many([{"text": unique_text(), "model": "echo"} for _ in range(count)])]


def _subscribers(broker_url: str, job_ids: Sequence[str]) -> int:
    """How many of the jobs' finish channels have a subscriber."""
    connection = redis.Redis.from_url(broker_url)
    try:
        counts = connection.pubsub_numsub(*[channel(uuid.UUID(i)) for i in job_ids])
    finally:
        connection.close()
    return sum(1 for _name, n in counts if n)


def _redis_connections(broker_url: str) -> int:
    """Connections to this backend's Redis database (the test's own one for asking excluded)."""
    connection = redis.Redis.from_url(broker_url)
    try:
        db = connection.connection_pool.connection_kwargs.get("db", 0)
        return sum(1 for c in connection.client_list() if int(c["db"]) == db) - 1
    finally:
        connection.close()


async def _timed_get(http: httpx.AsyncClient, job_id: str, wait: float) -> tuple[float, float, dict[str, object]]:
    started = time.monotonic()
    response = await http.get(f"/v1/jobs/{job_id}", params={"wait": wait})
    assert response.status_code == 200, response.text
    return wait, time.monotonic() - started, response.json()


def _client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=120,
                             limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))


def test_hundreds_of_waits_each_answer_within_their_wait(isolated_backend: Backend, tmp_path: Path) -> None:
    """300 concurrent `wait=2` and `wait=3` on jobs that stay queued. Each may take S, plus the time
    that the same burst of plain reads takes on this machine (measured first; x1.5: a wait reads its
    row twice, at its start and its end), plus a margin. Before, they queued behind 32 threads."""
    queued = _submit_queued(isolated_backend, 300)
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        finished = str(client.cancel(_submit_queued(isolated_backend, 1)[0]).id)

    async def run(base_url: str) -> tuple[float, list[tuple[float, float, dict[str, object]]], float]:
        async with _client(base_url) as http:
            reads = await asyncio.gather(*[_timed_get(http, job_id, 0) for job_id in queued])
        async with _client(base_url) as http:  # new connections: the server may close idle ones meanwhile
            waits = [asyncio.create_task(_timed_get(http, job_id, 2.0 + i % 2)) for i, job_id in enumerate(queued)]
            # Every wait is in flight (subscribed) before the finished job is asked for.
            await asyncio.to_thread(wait_until, lambda: _subscribers(isolated_backend.broker_url, queued) == len(queued),
                                    30, "all 300 waits to be in flight")
            _, finished_latency, job = await _timed_get(http, finished, 1.0)
            assert job["status"] == "cancelled"
            return max(latency for _, latency, _ in reads), await asyncio.gather(*waits), finished_latency

    with gateway_process(isolated_backend, tmp_path) as (base_url, _):
        burst, results, finished_latency = asyncio.run(run(base_url))
    slowest = {s: max(latency for wait, latency, _ in results if wait == s) for s in (2.0, 3.0)}
    print(f"\n300 concurrent plain reads: slowest {burst:.2f}s. 300 concurrent waits: slowest wait=2 answered after "
          f"{slowest[2.0]:.2f}s, wait=3 after {slowest[3.0]:.2f}s; wait=1 on a finished job meanwhile after "
          f"{finished_latency * 1000:.0f} ms")
    # Well under a second although it queues for a thread behind the last waits' first reads (before: ~S).
    assert finished_latency < 1.0
    for wait, latency, job in results:
        assert job["status"] == "queued"
        assert wait - 0.05 <= latency <= wait + 1.5 * burst + MARGIN_S, (wait, latency, burst)


def test_a_wait_wakes_on_the_finish_notification(worker: WorkerProcess, backend: Backend, tmp_path: Path) -> None:
    async def run(base_url: str) -> tuple[datetime, datetime, dict[str, object]]:
        with Client(database_url=backend.database_url, broker_url=backend.broker_url) as client:
            job_id = str(client.submit({"text": unique_text("slow"), "model": "slow"}).id)  # runs for 1 s
        async with _client(base_url) as http:
            asked_at = datetime.now(UTC)
            response = await http.get(f"/v1/jobs/{job_id}", params={"wait": 30})
            return asked_at, datetime.now(UTC), response.json()

    # Re-reads every 30 s only: an answer within a second of the finish came from the notification.
    with gateway_process(backend, tmp_path, TEXTQ_API_WAIT_RECHECK_S="30") as (base_url, _):
        asked_at, answered_at, job = asyncio.run(run(base_url))
    assert job["status"] == "succeeded"
    finished_at = datetime.fromisoformat(str(job["finished_at"]))
    assert asked_at < finished_at
    late = (answered_at - finished_at).total_seconds()
    print(f"\nanswered {late * 1000:.0f} ms after the job finished")
    assert late < 1.0


def test_callers_that_go_away_leave_no_thread_or_connection(isolated_backend: Backend, tmp_path: Path) -> None:
    queued = _submit_queued(isolated_backend, 100)
    broker_url = isolated_backend.broker_url

    async def open_and_abandon(base_url: str, process: psutil.Process) -> tuple[int, int]:
        async with _client(base_url) as http:
            await _timed_get(http, queued[0], 0.1)  # the listener's connection is open from here on
            connections, threads = _redis_connections(broker_url), process.num_threads()
            waits = [asyncio.create_task(http.get(f"/v1/jobs/{job_id}", params={"wait": 60})) for job_id in queued]
            await asyncio.to_thread(wait_until, lambda: _subscribers(broker_url, queued) == len(queued),
                                    20, "all waits to be in flight")
            # One pub/sub connection serves every wait, and at most a pool of threads (anyio's 40) reads rows.
            assert _redis_connections(broker_url) == connections
            assert process.num_threads() <= threads + 40
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return connections, threads

    with gateway_process(isolated_backend, tmp_path) as (base_url, process):
        connections, threads = asyncio.run(open_and_abandon(base_url, process))
        wait_until(lambda: _subscribers(broker_url, queued) == 0, 10, "the abandoned waits to unsubscribe")
        assert _redis_connections(broker_url) == connections
        # No thread is held by a wait: the pool's threads that read rows idle out, anyio stops those idle
        # for 10 s at its next call (a /healthz here), and the gateway is back to its threads of before.
        def back_to_baseline() -> bool:
            assert httpx.get(f"{base_url}/healthz").status_code == 200
            return process.num_threads() <= threads

        wait_until(back_to_baseline, 30, f"the gateway to be back to {threads} threads")


def test_waits_answer_without_redis(isolated_backend: Backend) -> None:
    """No notifications (Redis down): the periodic re-read still ends the wait when the job finishes."""
    with Client(database_url=isolated_backend.database_url, broker_url="redis://127.0.0.1:1/0") as client:
        app = create_app(client, GatewaySettings(keys=[KEY], wait_recheck_s=0.2))
        job_id = str(client.submit({"text": unique_text(), "model": "echo"}).id)

        def cancel_once_waited() -> None:
            wait_until(lambda: app.state.waiter.waiting == 1, 10, "the wait to start")
            client.cancel(job_id)

        canceller = threading.Thread(target=cancel_once_waited)
        with TestClient(app, headers=AUTH) as http:
            canceller.start()
            started = time.monotonic()
            response = http.get(f"/v1/jobs/{job_id}", params={"wait": 20})
            elapsed = time.monotonic() - started
        canceller.join()
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert elapsed < 5


def test_a_wait_outlives_a_lost_listener_connection(isolated_backend: Backend) -> None:
    """The listener's Redis connection is killed mid-wait: it reconnects, subscribes again, and the
    finish notification still ends the wait (re-reads every 30 s only, so it was the notification)."""
    broker_url = isolated_backend.broker_url
    with Client(database_url=isolated_backend.database_url, broker_url=broker_url) as client:
        app = create_app(client, GatewaySettings(keys=[KEY], wait_recheck_s=30))
        job_id = str(client.submit({"text": unique_text(), "model": "echo"}).id)
        finished: list[float] = []

        def kill_listener_then_finish() -> None:
            wait_until(lambda: _subscribers(broker_url, [job_id]) == 1, 10, "the wait to subscribe")
            admin = redis.Redis.from_url(broker_url)
            db = admin.connection_pool.connection_kwargs.get("db", 0)

            def listeners() -> list[str]:
                return [c["id"] for c in admin.client_list() if int(c["db"]) == db and int(c["sub"]) > 0]

            [killed] = listeners()
            admin.client_kill_filter(_id=killed)
            # A new connection's subscription, not the killed one's (Redis may list it a moment longer).
            wait_until(lambda: listeners() not in ([], [killed]), 10, "the listener to subscribe again")
            admin.close()
            client.cancel(job_id)
            FinishNotifier(redis_for(broker_url))([uuid.UUID(job_id)])
            finished.append(time.monotonic())

        helper = threading.Thread(target=kill_listener_then_finish)
        with TestClient(app, headers=AUTH) as http:
            helper.start()
            response = http.get(f"/v1/jobs/{job_id}", params={"wait": 20})
            answered = time.monotonic()
        helper.join()
    assert response.json()["status"] == "cancelled"
    # Well under the 20 s wait and the 30 s re-read: the notification ended it.
    assert finished and answered - finished[0] < 5.0


@pytest.mark.parametrize("wait", ["-1", "61", "nan", "inf", "soon"])
def test_bad_wait_is_422(client: Client, wait: str) -> None:
    with TestClient(create_app(client, GatewaySettings(keys=[KEY])), headers=AUTH) as http:
        response = http.get(f"/v1/jobs/{uuid.uuid4()}", params={"wait": wait})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "wait"
