"""A dead worker's jobs come back in seconds; a live worker's jobs are never taken from it.

The process tests run with the DEFAULT lease, heartbeat, sweep and republish settings (they are
what is measured), unlike the other fault tests' FAULT_ENV.
"""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from db import store, workers
from db.engine import session_factory
from db.models import Job, JobStatus, Worker, utcnow
from producer import Client
from producer.registry import default_registry
from producer.worker_process import WorkerProcess
from tests.conftest import MODELS_FILE, new_backend
from tests.faults.conftest import RedisServer
from tests.faults.report import tally
from tests.helpers import computed_texts, unique_text, wait_until
from tests.test_cli import textq
from worker.settings import WorkerSettings

TUNED_SETTINGS = ("TEXTQ_LEASE_S", "TEXTQ_HEARTBEAT_INTERVAL_S", "TEXTQ_SWEEP_INTERVAL_S", "TEXTQ_REPUBLISH_AFTER_S")
RECOVERY_TARGET_S = 20.0
LEASE = timedelta(seconds=10)


# -- the workers table, in process ------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with new_backend(request.param, "workers") as backend:
        yield backend.database_url


def _identity(name: str, models: tuple[str, ...] = ("slow",)) -> workers.WorkerIdentity:
    return workers.WorkerIdentity(name, "host", 1, models, utcnow())


def _new_jobs(url: str, model: str, count: int) -> list[uuid.UUID]:
    with session_factory(url).begin() as session:
        return store.create_jobs(session, jobs=[store.NewJob(model=model, task="classify", input={"text": unique_text()})
                                                for _ in range(count)])


def _claim(url: str, ids: list[uuid.UUID], worker: str) -> None:
    with session_factory(url).begin() as session:
        assert len(store.claim_jobs(session, ids=ids, model="slow", worker=worker, lease=LEASE, max_attempts=3)) == len(ids)


def _beat(url: str, name: str, *, seconds_ago: float = 0.0) -> None:
    with session_factory(url).begin() as session:
        workers.record_heartbeat(session, worker=_identity(name), jobs_in_hand=7, state=workers.WorkerState.RUNNING)
        session.execute(update(Worker).where(Worker.name == name).values(last_seen=utcnow() - timedelta(seconds=seconds_ago)))


def _backdate_publish(url: str, ids: list[uuid.UUID], when: datetime) -> None:
    with session_factory(url).begin() as session:
        session.execute(update(Job).where(Job.id.in_(ids)).values(published_at=when))


def test_a_heartbeat_renews_the_leases_of_the_jobs_it_holds_only(database_url: str) -> None:
    mine, theirs, queued, let_go = (_new_jobs(database_url, "slow", 2) for _ in range(4))
    _claim(database_url, mine + let_go, "me:1")  # let_go: claimed, but no longer held (a write that failed)
    _claim(database_url, theirs, "them:2")
    before = {j.id: j.lease_until for j in _rows(database_url, mine + theirs + let_go)}
    with session_factory(database_url).begin() as session:
        workers.record_heartbeat(session, worker=_identity("me:1"), jobs_in_hand=5, state=workers.WorkerState.RUNNING)
        held = mine + theirs + queued  # a stale id list can name others' jobs: they are left alone
        assert workers.renew_leases(session, worker="me:1", job_ids=held, lease=timedelta(minutes=5)) == 2
    after = {j.id: j for j in _rows(database_url, mine + theirs + queued + let_go)}
    assert all(after[i].lease_until > before[i] + timedelta(minutes=4) for i in mine)  # type: ignore[operator]
    assert all(after[i].lease_until == before[i] for i in theirs + let_go)
    assert all(after[i].lease_until is None for i in queued)
    with session_factory(database_url)() as session:
        [me] = workers.list_workers(session)
    assert (me.name, me.jobs_in_hand, me.state, me.models) == ("me:1", 5, "running", ["slow"])
    assert utcnow() - me.last_seen < timedelta(seconds=5)


def test_a_dead_workers_jobs_are_picked_once_and_a_live_workers_are_left_alone(database_url: str) -> None:
    dead_running, live_running = _new_jobs(database_url, "slow", 2), _new_jobs(database_url, "slow", 1)
    _claim(database_url, dead_running, "dead:1")
    _claim(database_url, live_running, "live:2")
    _beat(database_url, "dead:1", seconds_ago=60)
    _beat(database_url, "live:2")
    long_ago = utcnow() - timedelta(seconds=30)
    held = _new_jobs(database_url, "slow", 3)  # published before the message at the queue's head
    waiting = _new_jobs(database_url, "slow", 2)  # their message is still on the queue
    other_model = _new_jobs(database_url, "echo", 2)  # no dead worker served it
    _backdate_publish(database_url, held + other_model, long_ago)
    head = utcnow() - timedelta(seconds=1)
    _backdate_publish(database_url, waiting, head)

    def reclaim() -> tuple[list[str], list[tuple[uuid.UUID, str, int]]]:
        with session_factory(database_url).begin() as session:
            return workers.reclaim_dead_workers(
                session, silent_for=timedelta(seconds=6), waiting_since={"slow": head, "echo": None}, limit=100
            )

    names, picked = reclaim()
    assert names == ["dead:1"]
    assert sorted(p[0] for p in picked) == sorted(dead_running + held)
    assert reclaim() == ([], [])  # removed with its jobs: no other sweep publishes them again
    by_id = {j.id: j for j in _rows(database_url, dead_running + live_running + held + waiting + other_model)}
    assert all((by_id[i].status, by_id[i].worker, by_id[i].attempts) == ("queued", None, 1) for i in dead_running)
    assert all(by_id[i].publish_count == 2 for i in dead_running + held)
    assert all(by_id[i].status == "running" and by_id[i].worker == "live:2" for i in live_running)
    assert all(by_id[i].publish_count == 1 for i in waiting + other_model)
    with session_factory(database_url)() as session:
        assert [w.name for w in workers.list_workers(session)] == ["live:2"]


def _rows(url: str, ids: list[uuid.UUID]) -> list[Job]:
    with session_factory(url)() as session:
        return store.get_jobs(session, ids=ids)


# -- real worker processes, default settings ----------------------------------------------------
def _default_worker(database_url: str, broker_url: str, model: str) -> WorkerProcess:
    env = {"TEXTQ_DATABASE_URL": database_url, "TEXTQ_BROKER_URL": broker_url, "TEXTQ_MODELS_FILE": str(MODELS_FILE),
           "TOKENIZERS_PARALLELISM": "false"}
    process = WorkerProcess(env=env, models=[model], name="death")
    for setting in TUNED_SETTINGS:  # inherited from the test run's environment, it would spoil the measurement
        process.env.pop(setting, None)
    return process


def _start_all(stack: ExitStack, processes: list[WorkerProcess]) -> None:
    for process in processes:
        stack.callback(process.stop)
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(WorkerProcess.start, processes))


def _name(process: WorkerProcess) -> str:
    return f"{socket.gethostname()}:{process.pid}"  # the runtime's name for itself, as jobs.worker has it


def _in_hand(database_url: str) -> dict[str, int]:
    with session_factory(database_url)() as session:
        return {w.name: w.jobs_in_hand for w in workers.list_workers(session)}


def _holding_claimed_and_unclaimed(
    database_url: str, ids: list[uuid.UUID], processes: list[WorkerProcess]
) -> WorkerProcess | None:
    """A worker computing a batch (one batch already written) that also holds ids it has not claimed."""
    jobs = _rows(database_url, ids)
    if not any(j.status == JobStatus.SUCCEEDED for j in jobs):
        return None
    in_hand = _in_hand(database_url)
    for process in processes:
        running = sum(j.status == JobStatus.RUNNING and j.worker == _name(process) for j in jobs)
        if running and in_hand.get(_name(process), 0) >= running + 4:
            return process
    return None


def test_kill_9_mid_batch_another_worker_finishes_every_job_within_20_s(postgres_db: str, private_redis: RedisServer) -> None:
    batch_size = default_registry().get("slow").max_batch_size
    batch_s = float(default_registry().get("slow").options["sleep_s"])
    texts = [unique_text("death") for _ in range(48)]
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client, ExitStack() as stack:
        processes = [_default_worker(postgres_db, private_redis.url, "slow") for _ in range(2)]
        _start_all(stack, processes)
        ids: list[uuid.UUID] = []
        for start in range(0, len(texts), batch_size):  # one message per batch: both workers take some
            ids += [v.id for v in client.submit_many([{"text": t, "model": "slow"} for t in texts[start : start + batch_size]])]
        victim: WorkerProcess | None = None

        def found_victim() -> bool:
            nonlocal victim
            victim = _holding_claimed_and_unclaimed(postgres_db, ids, processes)
            return victim is not None

        wait_until(found_victim, timeout=60, what="a worker computing a batch with more ids in hand")
        assert victim is not None
        survivor = next(p for p in processes if p is not victim)
        killed_at = utcnow()
        victim.kill()
        at_kill = _rows(postgres_db, ids)
        claimed_by_victim = [j.id for j in at_kill if j.status == JobStatus.RUNNING and j.worker == _name(victim)]
        unfinished = [j.id for j in at_kill if j.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
        views = client.wait_many(ids, timeout=120)
        counts = tally(postgres_db, views, texts, computed_texts("slow"))
    with session_factory(postgres_db)() as session:  # the survivor has stopped
        listed = [w.name for w in workers.list_workers(session)]
    by_id = {v.id: v for v in views}
    finished = [v.finished_at for v in views if v.finished_at is not None]
    claimed_again = [started for i in claimed_by_victim if (started := by_id[i].started_at) is not None]
    recovery_s = (max(finished) - killed_at).total_seconds()
    back_s = (min(claimed_again) - killed_at).total_seconds()
    # The victim's claimed jobs are run alone (one of them may have killed it); the rest in batches.
    compute_s = (len(claimed_by_victim) + math.ceil((len(unfinished) - len(claimed_by_victim)) / batch_size)) * batch_s
    print(f"\nkill -9 -> the victim's claimed jobs claimed again: {back_s:.1f}s; -> last job finished: {recovery_s:.1f}s "
          f"({len(unfinished)} unfinished at the kill, {len(claimed_by_victim)} claimed by the victim; "
          f"target {RECOVERY_TARGET_S:.0f}s + {compute_s:.0f}s of compute)")
    assert counts == {"submitted": 48, "succeeded": 48, "failed": 0, "lost": 0, "duplicated": 0}
    assert claimed_by_victim, "killed while computing a batch"
    assert {by_id[i].worker for i in unfinished} == {_name(survivor)}
    assert all(by_id[i].attempts == 2 for i in claimed_by_victim)
    assert back_s <= RECOVERY_TARGET_S  # not after the lease of old (300 s) nor the republish delay (60 s)
    assert recovery_s <= RECOVERY_TARGET_S + compute_s
    assert _name(victim) not in listed  # the sweeper removed the dead worker
    assert _name(survivor) not in listed  # and the survivor its own row, on its clean stop


def test_a_job_longer_than_the_lease_is_computed_once(postgres_db: str, private_redis: RedisServer) -> None:
    lease_s = float(WorkerSettings.model_fields["lease_s"].default)
    assert float(default_registry().get("long").options["sleep_s"]) > lease_s  # else this proves nothing
    text = unique_text("long")
    with Client(database_url=postgres_db, broker_url=private_redis.url) as client, ExitStack() as stack:
        processes = [_default_worker(postgres_db, private_redis.url, "long") for _ in range(2)]
        _start_all(stack, processes)
        job = client.classify(text, model="long")
        wait_until(lambda: _rows(postgres_db, [job.id])[0].status == JobStatus.RUNNING, what="the long job running")
        holder = _rows(postgres_db, [job.id])[0].worker
        assert holder is not None
        wait_until(lambda: _in_hand(postgres_db).get(holder) == 1, what="the holder's heartbeat")
        status = textq("status", env=processes[0].env)
        [line] = [line for line in status.stdout.splitlines() if line.startswith(f"{holder} ")]
        assert "long" in line.split() and line.split()[-2:] == ["1", "running"], status.stdout
        leases: list[datetime] = []

        def done() -> bool:
            [row] = _rows(postgres_db, [job.id])
            if row.lease_until is not None:
                leases.append(row.lease_until)
            return row.status in ("succeeded", "failed")

        wait_until(done, timeout=90, what="the long job")
        view = client.get(job.id)
    assert view.status == "succeeded"
    assert view.attempts == 1
    assert computed_texts("long")[text] == 1
    assert view.started_at is not None
    assert max(leases) > view.started_at + timedelta(seconds=lease_s + 1)  # renewed while it ran

