"""The result cache: in-process against SQLite (keys, windows, age and size), then real workers over
HTTP and PostgreSQL (tenants, two workers computing the same text at once)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import result_cache, store, upgrade
from db.engine import make_engine
from db.models import CachedResult, Job, utcnow
from db.result_cache import NewEntry
from producer import Client
from producer.contract import JobView
from producer.gateway import GatewaySettings, create_app
from producer.registry import ModelSpec
from producer.worker_process import WorkerProcess
from tests.helpers import computed_texts, unique_text
from tests.runners import BatchRecordingRunner, FailOnceRunner, GatedRunner
from tests.services import create_postgres_database, drop_postgres_database
from worker.batcher import Batcher
from worker.result_cache import CacheLimits, ResultCache
from worker.runners.base import Runner

MODEL = "cached-unit"
WEEK = CacheLimits(max_entries=1000, max_age=timedelta(days=7))


@dataclass
class Cached:
    batcher: Batcher
    runner: Any
    sessions: sessionmaker[Session]

    def run(self, *texts: str, tenant: str = "default", **fields: Any) -> list[JobView]:
        """Submit jobs, hand them in together (one window) and return their rows once written."""
        jobs = [store.NewJob(model=MODEL, task="classify", input={"text": t, **fields}, tenant=tenant) for t in texts]
        with self.sessions.begin() as session:
            ids = store.create_jobs(session, jobs=jobs)
        self.batcher.hand_in(ids)
        assert self.batcher.wait_idle(timeout=30)
        with self.sessions() as session:
            found = {job.id: JobView.model_validate(job) for job in store.get_jobs(session, ids=ids)}
        return [found[i] for i in ids]

    def computed(self) -> list[str]:
        return [text for _, batch in self.runner.batches for text in batch]

    def entries(self) -> list[CachedResult]:
        with self.sessions() as session:
            return list(session.scalars(select(CachedResult).order_by(CachedResult.created_at)))


@pytest.fixture()
def cached(tmp_path: Path) -> Iterator[Callable[..., Cached]]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    batchers: list[Batcher] = []

    def make(runner_class: type[Runner] = BatchRecordingRunner, *, limits: CacheLimits = WEEK, cache: bool = True,
             options: dict[str, Any] | None = None) -> Cached:
        spec = ModelSpec(name=MODEL, kind="classify", runner=f"tests.runners:{runner_class.__name__}", device="cpu",
                         result_cache=cache, options=options or {})
        runner = runner_class(spec)
        # prune_interval_s=0: every write prunes, so the bounds can be checked at once.
        cache_of_model = ResultCache(spec, sessions, limits, prune_interval_s=0) if cache else None
        batcher = Batcher(runner, sessions, lease=timedelta(seconds=30), result_cache=cache_of_model)
        batcher.start()
        batchers.append(batcher)
        return Cached(batcher, runner, sessions)

    yield make
    for batcher in batchers:
        batcher.stop(timeout=10)
    engine.dispose()


def test_an_identical_job_reuses_the_first_ones_output_uncomputed(cached: Callable[..., Cached]) -> None:
    c = cached()
    [first] = c.run("the same words")
    [again] = c.run("the same words")
    assert c.computed() == ["the same words"]
    assert (first.status, first.cached_from, first.cache_hit) == ("succeeded", None, False)
    assert (again.status, again.cached_from, again.cache_hit) == ("succeeded", first.id, True)
    assert again.output == first.output and again.attempts == 1
    assert again.model_dump(mode="json")["cache_hit"] is True  # what the gateway sends
    [entry] = c.entries()
    assert (entry.source_job_id, entry.output, entry.model) == (first.id, first.output, MODEL)
    assert "the same words" not in repr(entry.key), "entries hold a hash, never the text"


def test_identical_jobs_in_one_window_are_computed_once(cached: Callable[..., Cached]) -> None:
    c = cached()
    views = c.run("twin", "other", "twin", "twin")
    assert sorted(c.computed()) == ["other", "twin"]
    assert [v.status for v in views] == ["succeeded"] * 4
    first, _, second, third = views
    assert first.cached_from is None and second.cached_from == third.cached_from == first.id
    assert second.output == third.output == first.output
    assert len(c.entries()) == 2


def test_other_options_and_other_tenants_are_computed_again(cached: Callable[..., Cached]) -> None:
    c = cached()
    [plain] = c.run("a long enough text")
    [truncated] = c.run("a long enough text", truncate=True)
    [elsewhere] = c.run("a long enough text", tenant="acme")
    [acme_again] = c.run("a long enough text", tenant="acme")
    assert c.computed() == ["a long enough text"] * 3
    assert plain.cached_from is None and truncated.cached_from is None and elsewhere.cached_from is None
    assert acme_again.cached_from == elsewhere.id, "a tenant reuses its own results only"


def test_a_model_without_a_result_cache_computes_every_job(cached: Callable[..., Cached]) -> None:
    c = cached(cache=False)
    views = c.run("again", "again")
    views += c.run("again")
    assert c.computed() == ["again"] * 3
    assert [v.cached_from for v in views] == [None] * 3
    assert c.entries() == []


def test_an_error_of_the_first_is_not_shared_by_identical_jobs(cached: Callable[..., Cached], tmp_path: Path) -> None:
    c = cached(FailOnceRunner, options={"seen_log": str(tmp_path / "seen.log")})
    first, twin = c.run("FLAKY words", "FLAKY words")
    assert (first.status, first.error_type) == ("failed", "ValueError")
    assert (twin.status, twin.cached_from) == ("succeeded", None), "computed on its own after the first failed"
    [again] = c.run("FLAKY words")
    assert again.cached_from == twin.id


def test_entries_past_their_age_are_neither_reused_nor_kept(cached: Callable[..., Cached]) -> None:
    c = cached(limits=CacheLimits(max_entries=1000, max_age=timedelta(hours=1)))
    old, _ = c.run("aging", "gone")
    with c.sessions.begin() as session:
        session.execute(update(CachedResult).values(created_at=utcnow() - timedelta(hours=2)))
    [fresh] = c.run("aging")
    assert fresh.cached_from is None and c.computed() == ["aging", "gone", "aging"]
    [entry] = c.entries()  # the fresh job's output replaced the stale entry; the write's prune took "gone"
    assert entry.source_job_id == fresh.id != old.id
    [again] = c.run("aging")
    assert again.cached_from == fresh.id


def test_the_newest_entries_are_kept_up_to_max_entries(cached: Callable[..., Cached]) -> None:
    c = cached(limits=CacheLimits(max_entries=2, max_age=timedelta(days=1)))
    views = [c.run(text)[0] for text in ("one", "two", "three", "four")]
    assert [e.source_job_id for e in c.entries()] == [views[2].id, views[3].id]
    assert [v.cache_hit for v in c.run("three", "four", "one")] == [True, True, False]


# -- real workers -------------------------------------------------------------------------------
def test_a_repeated_job_over_http_is_a_cache_hit_within_its_tenant(worker: WorkerProcess, client: Client) -> None:
    acme, umbrella = "key-" + uuid.uuid4().hex, "key-" + uuid.uuid4().hex
    app = create_app(client, GatewaySettings(keys=[f"{acme}:acme", f"{umbrella}:umbrella"]))
    text = unique_text("repeated")

    def submit_and_wait(http: TestClient, key: str) -> dict[str, Any]:
        created = http.post("/v1/jobs", json={"text": text, "model": "cached"}, headers={"X-API-Key": key})
        assert created.status_code == 202, created.text
        assert (created.json()["cache_hit"], created.json()["cached_from"]) == (False, None)
        done: dict[str, Any] = http.get(f"/v1/jobs/{created.json()['id']}", params={"wait": 30},
                                        headers={"X-API-Key": key}).json()
        assert done["status"] == "succeeded", done
        return done

    with TestClient(app) as http:
        first, again, other_tenant = (submit_and_wait(http, acme), submit_and_wait(http, acme),
                                      submit_and_wait(http, umbrella))
    assert (first["cache_hit"], again["cache_hit"], other_tenant["cache_hit"]) == (False, True, False)
    assert again["cached_from"] == first["id"] and again["output"] == first["output"]
    assert other_tenant["cached_from"] is None
    assert computed_texts("cached")[text] == 2, "computed once per tenant"


@pytest.fixture(scope="module")
def postgres() -> Iterator[sessionmaker[Session]]:
    url, name = create_postgres_database()
    try:
        upgrade(url)
        engine = make_engine(url)
        yield sessionmaker(engine, expire_on_commit=False)
        engine.dispose()
    finally:
        drop_postgres_database(name)


def test_two_workers_computing_the_same_text_at_once_both_succeed(postgres: sessionmaker[Session]) -> None:
    spec = ModelSpec(name=MODEL, kind="classify", runner="tests.runners:GatedRunner", device="cpu", result_cache=True)
    runners = [GatedRunner(spec) for _ in range(2)]
    batchers = [Batcher(r, postgres, lease=timedelta(seconds=30), worker_name=f"worker-{i}",
                        result_cache=ResultCache(spec, postgres, WEEK)) for i, r in enumerate(runners)]
    text = unique_text("race")
    with postgres.begin() as session:
        ids = store.create_jobs(session, jobs=[store.NewJob(model=MODEL, task="classify", input={"text": text})
                                               for _ in range(2)])
    for batcher, job_id, runner in zip(batchers, ids, runners, strict=True):
        batcher.start()
        batcher.hand_in([job_id])
        assert runner.started.wait(10)  # both computing: neither found an entry
    for runner in runners:
        runner.gate.set()  # both write the same key at about the same time
    for batcher in batchers:
        assert batcher.wait_idle(timeout=30)
    with postgres() as session:
        rows = store.get_jobs(session, ids=ids)
        [entry] = session.scalars(select(CachedResult).where(CachedResult.model == MODEL))
    assert [(r.status, r.cached_from) for r in rows] == [("succeeded", None)] * 2
    assert {r.worker for r in rows} == {"worker-0", "worker-1"} and rows[0].output == rows[1].output
    assert entry.source_job_id in ids
    [hit] = Cached(batchers[0], runners[0], postgres).run(text)
    assert hit.cached_from == entry.source_job_id
    for batcher in batchers:
        batcher.stop(timeout=10)


def test_writers_adding_the_same_keys_in_any_order_do_not_deadlock_on_postgresql(postgres: sessionmaker[Session]) -> None:
    model = "cached-many"
    with postgres.begin() as session:
        ids = store.create_jobs(session, jobs=[store.NewJob(model=model, task="classify", input={"text": f"t{i}"})
                                               for i in range(40)])
        session.execute(update(Job).where(Job.id.in_(ids)).values(status="succeeded", output={"label": "x"}))
    entries = [NewEntry(f"{i:064x}", job_id) for i, job_id in enumerate(ids)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(order: list[NewEntry]) -> None:
        try:
            start.wait()
            for _ in range(10):  # stale_before=now: every write after the first replaces entries (row locks)
                with postgres.begin() as session:
                    result_cache.remember_results(session, model=model, entries=order, stale_before=utcnow())
        except BaseException as exc:
            errors.append(exc)

    orders = [entries, entries[::-1], entries[1::2] + entries[::2], entries[::2] + entries[1::2]]
    threads = [threading.Thread(target=writer, args=(order,)) for order in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with postgres() as session:
        assert result_cache.count_results(session, model=model) == 40
