"""Operator surface: push-based wait, metrics, scale-out and pinned workers."""

from __future__ import annotations

import statistics
import time
import urllib.request

from producer import Client
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.faults.conftest import free_port
from tests.helpers import unique_text


def test_wait_wakes_on_the_finish_notification_not_the_poll(worker: WorkerProcess, client: Client) -> None:
    # With a 10 s poll interval, only the pub/sub notification can make wait() return quickly.
    delays = []
    for _ in range(5):
        job = client.classify(unique_text("notify"), model="echo")
        started = time.monotonic()
        view = client.wait(job.id, timeout=30, poll_interval=10)
        assert view.status == "succeeded"
        delays.append(time.monotonic() - started)
    print(f"\nsubmit-to-wake median {statistics.median(delays) * 1000:.0f} ms with a 10 s poll interval")
    assert statistics.median(delays) < 2


def test_two_workers_share_a_queue_and_a_pinned_worker_serves_only_its_model(isolated_backend: Backend) -> None:
    env = isolated_backend.env
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        with WorkerProcess(env=env, models=["slow"], name="a"), \
             WorkerProcess(env=env, models=["slow"], name="b"):
            jobs = [client.classify(unique_text("shared"), model="slow") for _ in range(16)]
            views = client.wait_many([j.id for j in jobs], timeout=60)
        assert len({v.worker for v in views}) == 2  # both workers took work

        with WorkerProcess(env=env, models=["echo"], name="pinned"):
            mine = client.classify(unique_text("mine"), model="echo")
            other = client.classify(unique_text("other"), model="slow")
            assert client.wait(mine.id, timeout=30).status == "succeeded"
            time.sleep(1.0)
            assert client.get(other.id).status == "queued"  # not this worker's model


def test_worker_serves_prometheus_metrics(isolated_backend: Backend) -> None:
    port = free_port()
    env = {**isolated_backend.env, "TEXTQ_METRICS_PORT": str(port)}
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client, \
         WorkerProcess(env=env, models=["echo"], name="metrics"):
        jobs = client.submit_many([{"text": unique_text("m"), "model": "echo"} for _ in range(10)])
        client.wait_many([j.id for j in jobs], timeout=30)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'textq_jobs_total{model="echo",status="succeeded"} 10.0' in text
    assert 'textq_batch_size_count{model="echo"}' in text
    assert 'textq_queue_wait_seconds_count{model="echo"} 10.0' in text
    assert 'textq_inference_seconds_sum{model="echo"}' in text
    assert 'textq_model_load_seconds{model="echo"}' in text


def test_status_purge_and_worker_check_from_the_cli(isolated_backend: Backend) -> None:
    from datetime import timedelta

    from db.engine import session_factory
    from db.models import Job
    from tests.test_cli import textq

    env = isolated_backend.env
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        assert textq("worker", "--check", env=env).returncode == 1  # nobody to answer yet
        with WorkerProcess(env=env, models=["echo"], name="ops"):
            old = client.wait_many([j.id for j in client.submit_many([{"text": unique_text("old"), "model": "echo"}] * 3)])
            check = textq("worker", "--check", env=env)
            assert check.returncode == 0, check.stderr
            status = textq("status", env=env)
            assert "workers alive: 1" in status.stdout
            assert "succeeded                3" in status.stdout
        queued = client.classify(unique_text("queued"), model="echo")  # no worker now: stays queued
        with session_factory(isolated_backend.database_url).begin() as session:
            for view in old:  # pretend they finished ten days ago
                session.get_one(Job, view.id).finished_at = view.finished_at - timedelta(days=10)  # type: ignore[operator]
        assert "textq.echo               1" in textq("status", env=env).stdout
        bad = textq("jobs", "purge", "--older-than", "seven days", env=env)
        assert bad.returncode == 2 and "use a number and a unit" in bad.stderr
        purge = textq("jobs", "purge", "--older-than", "7d", env=env)
        assert "deleted 3 finished jobs" in purge.stdout, purge.stderr
        assert client.get(queued.id).status == "queued"
        assert "deleted 0 finished jobs" in textq("jobs", "purge", "--older-than", "1s", env=env).stdout


def test_ping_reports_each_dependency_within_its_timeout(backend: Backend, tmp_path: object) -> None:
    import socket

    with Client(database_url=backend.database_url, broker_url=backend.broker_url) as client:
        assert client.ping().ready
    # A server that accepts connections and never answers: only the timeout ends the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        for database_url, broker_url, failed in [
            (backend.database_url, f"redis://127.0.0.1:{port}/0", "broker"),
            (f"postgresql://textq@127.0.0.1:{port}/textq", backend.broker_url, "database"),
        ]:
            with Client(database_url=database_url, broker_url=broker_url) as client:
                started = time.monotonic()
                # Long enough for the live one on a busy machine (a cold SQLite file took over 0.5 s).
                answers = client.ping(timeout=1.5)
                took = time.monotonic() - started
            assert not answers.ready and getattr(answers, failed).startswith("error: ")
            assert answers.database == "ok" or answers.broker == "ok"
            assert took < 2.9, f"ping took {took:.1f} s with a 1.5 s timeout (the default is 3 s)"


def test_a_tenant_client_purges_and_counts_only_its_own_jobs(isolated_backend: Backend) -> None:
    from datetime import timedelta

    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        acme, globex = client.for_tenant("acme"), client.for_tenant("globex")
        mine, theirs = acme.classify(unique_text(), model="echo"), globex.classify(unique_text(), model="echo")
        for job in (mine, theirs):
            client.cancel(job.id)  # finished now
        assert acme.count_by_status() == {"cancelled": 1} and client.count_by_status() == {"cancelled": 2}
        assert acme.purge_finished(timedelta(seconds=0)) == 1
        assert client.count_by_status() == {"cancelled": 1}
        assert client.get(theirs.id).status == "cancelled"
        assert client.purge_finished(timedelta(seconds=0), batch_size=1) == 1
        assert client.count_by_status() == {}
