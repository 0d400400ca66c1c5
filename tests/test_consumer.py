"""The worker's consumer against a real Redis and worker process: after each BRPOP it pops the
messages already waiting, but never more than its batchers have room for (the rest stay within
other workers' reach)."""

from __future__ import annotations

import time

import redis

from db.models import JobStatus
from producer import Client
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import unique_text, wait_until
from worker.batcher import HIGH_WATER_WINDOWS, WINDOW_BATCHES


def _brpops(broker: redis.Redis) -> int:
    return int(broker.info("commandstats").get("cmdstat_brpop", {}).get("calls", 0))


def test_waiting_one_job_messages_are_taken_without_a_brpop_each(isolated_backend: Backend) -> None:
    env = {**isolated_backend.env, "TEXTQ_WORKER_MODELS": "echo"}
    broker = redis.Redis.from_url(isolated_backend.broker_url)
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        ids = [client.classify(unique_text("drained"), model="echo").id for _ in range(300)]  # 300 messages
        assert client.publisher.queue_depth("echo") == 300
        before = _brpops(broker)
        with WorkerProcess(env=env, name="drain"):
            views = client.wait_many(ids, timeout=120)
        brpops = _brpops(broker) - before  # the whole Redis server's: other idle workers poll too
    broker.close()
    assert [v.status for v in views] == ["succeeded"] * 300
    assert brpops < 150, f"{brpops} BRPOPs for 300 waiting messages"


def test_a_busy_worker_leaves_what_it_has_no_room_for_on_the_queue(isolated_backend: Backend) -> None:
    # `slow`: batches of 4 that take a second each; its batcher holds at most 3 windows of 4 batches.
    high_water = HIGH_WATER_WINDOWS * WINDOW_BATCHES * 4
    env = {**isolated_backend.env, "TEXTQ_WORKER_MODELS": "slow"}
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        for _ in range(100):
            client.classify(unique_text("busy"), model="slow")
        with WorkerProcess(env=env, name="busy"):
            wait_until(lambda: client.publisher.queue_depth("slow") < 100 - high_water + 8, timeout=60,
                       what="the worker took its fill")
            for _ in range(10):  # over two batches: each one written makes room for 4 more
                waiting = client.publisher.queue_depth("slow")
                finished = client.count_by_status().get(JobStatus.SUCCEEDED, 0)  # read second: it can only have grown since
                # In hand at most high_water, plus the one message a blocked hand_in holds.
                assert 100 - waiting <= high_water + 1 + finished, (waiting, finished)
                time.sleep(0.2)
