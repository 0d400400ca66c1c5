"""The claimer/batcher/writer pipeline in-process, against SQLite in a temp dir, with test runners."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from db import store, upgrade
from db.engine import make_engine
from db.models import Job, utcnow
from db.store import Outcome, OutcomeKind
from producer.registry import ModelSpec
from tests.helpers import wait_until
from tests.runners import (
    BatchRecordingRunner,
    FailingRunner,
    GatedRunner,
    MemoryHungryRunner,
    MiscountingRunner,
    RetryingRunner,
    SteppedRunner,
)
from worker.batcher import Batcher
from worker.retry import RetryPolicy
from worker.runners.base import CHARS_PER_TOKEN, Runner

MODEL = "unit"


@dataclass
class Pipeline:
    """One in-process batcher over a fresh SQLite database."""

    batcher: Batcher
    runner: Any
    sessions: sessionmaker[Session]
    released: list[Outcome] = field(default_factory=list)

    def submit(self, *texts: str, expires_at: datetime | None = None, priority: int = 5) -> list[uuid.UUID]:
        jobs = [store.NewJob(model=MODEL, task="classify", input={"text": t}, expires_at=expires_at, priority=priority)
                for t in texts]
        with self.sessions.begin() as session:
            return store.create_jobs(session, jobs=jobs)

    def run(self, ids: list[uuid.UUID]) -> list[Job]:
        """Hand the jobs in, wait until every outcome is written, and read their rows."""
        self.batcher.hand_in(ids)
        assert self.batcher.wait_idle(timeout=30)
        return self.rows(ids)

    def rows(self, ids: list[uuid.UUID]) -> list[Job]:
        with self.sessions() as session:
            found = {job.id: job for job in store.get_jobs(session, ids=ids)}
        return [found[i] for i in ids]

    def make_due(self, job_id: uuid.UUID) -> None:
        """As if the job's backoff had passed."""
        with self.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(retry_at=utcnow() - timedelta(seconds=1)))


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture()
def pipeline(tmp_path: Path) -> Iterator[PipelineFactory]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    batchers: list[Batcher] = []

    def make(runner_class: type[Runner], *, policy: RetryPolicy | None = None, start: bool = True,
             options: dict[str, Any] | None = None, **spec_fields: Any) -> Pipeline:
        spec = ModelSpec(name=MODEL, kind="classify", runner=f"tests.runners:{runner_class.__name__}", device="cpu",
                         options=options or {}, **spec_fields)
        runner = runner_class(spec)
        released: list[Outcome] = []
        batcher = Batcher(runner, sessions, lease=timedelta(seconds=30), policy=policy, on_release=released.extend)
        if start:
            batcher.start()
        batchers.append(batcher)
        return Pipeline(batcher, runner, sessions, released)

    yield make
    for batcher in batchers:
        batcher.stop(timeout=10)
    engine.dispose()


def texts(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_a_batch_gathers_up_to_max_batch_size(pipeline: PipelineFactory) -> None:
    p = pipeline(BatchRecordingRunner, start=False, max_batch_size=4)
    ids = p.submit(*texts("gather", 10))
    p.batcher.hand_in(ids)  # all waiting before the claimer starts
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    assert [len(batch) for _, batch in p.runner.batches] == [4, 4, 2]
    assert [row.status for row in p.rows(ids)] == ["succeeded"] * 10


def test_a_batch_closes_when_full_or_after_max_wait_ms(pipeline: PipelineFactory) -> None:
    p = pipeline(BatchRecordingRunner, start=False, max_batch_size=4, max_wait_ms=600)
    warm_up = p.submit(*texts("warm-up", 2))
    p.batcher.hand_in(warm_up)  # a batch of more than one: the next batches wait for company
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)

    full = p.submit(*texts("full", 4))
    handed_in = time.monotonic()
    p.run(full)
    ran_at, batch = p.runner.batches[-1]
    assert batch == texts("full", 4)
    assert ran_at - handed_in < 0.6, "a full batch does not wait out max_wait_ms"

    first, second = p.submit("alone", "joins")
    handed_in = time.monotonic()
    p.batcher.hand_in([first])
    p.batcher.hand_in([second])  # arrives within the window: same batch
    assert p.batcher.wait_idle(timeout=30)
    ran_at, batch = p.runner.batches[-1]
    assert batch == ["alone", "joins"]
    assert ran_at - handed_in >= 0.6, "a batch that is not full closes only after max_wait_ms"


def test_token_budget_splits_length_sorted_groups(pipeline: PipelineFactory) -> None:
    budget = 40
    p = pipeline(BatchRecordingRunner, start=False, max_batch_size=32, max_batch_tokens=budget)
    lengths = [3, 60, 12, 200, 7, 30, 45, 1, 18, 90, 5, 24]
    job_texts = [f"{n:03d}" + "x" * n for n in lengths]
    ids = p.submit(*job_texts)
    p.batcher.hand_in(ids)
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)

    def tokens(text: str) -> int:
        return len(text) // CHARS_PER_TOKEN + 2

    groups = [batch for _, batch in p.runner.batches]
    assert len(groups) > 1
    ran = [text for group in groups for text in group]
    assert sorted(ran) == sorted(job_texts)
    assert [tokens(t) for t in ran] == sorted(tokens(t) for t in job_texts), "groups run shortest first, each sorted"
    for group in groups:
        if len(group) > 1:
            assert len(group) * max(tokens(t) for t in group) <= budget, group
    assert any(len(group) == 1 and tokens(group[0]) > budget for group in groups), "too long alone still runs"
    assert [row.status for row in p.rows(ids)] == ["succeeded"] * len(ids)


def test_jobs_already_waiting_are_sorted_across_batches_before_they_are_cut(pipeline: PipelineFactory) -> None:
    p = pipeline(BatchRecordingRunner, start=False, max_batch_size=4)
    lengths = [93, 1, 41, 5, 201, 13, 9, 65, 29, 17, 149, 21]  # a long text in every arrival batch of 4
    job_texts = [f"{n:03d}" + "x" * n for n in lengths]
    ids = p.submit(*job_texts)
    p.batcher.hand_in(ids)  # all waiting: one claim looks at up to WINDOW_BATCHES batches
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    by_length = sorted(job_texts, key=len)
    assert [batch for _, batch in p.runner.batches] == [by_length[0:4], by_length[4:8], by_length[8:12]]


def test_a_window_runs_its_most_urgent_priority_first_in_groups_of_its_own(pipeline: PipelineFactory) -> None:
    p = pipeline(BatchRecordingRunner, start=False, max_batch_size=4)
    backlog = p.submit(*texts("low", 6), priority=9)  # shorter texts: length alone would run them first
    urgent = p.submit(*texts("urgent", 2), priority=0)
    p.batcher.hand_in(backlog + urgent)  # all waiting: one window
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    assert [batch for _, batch in p.runner.batches] == [texts("urgent", 2), texts("low", 4), texts("low", 6)[4:]]


def test_a_window_is_written_batch_by_batch_while_the_rest_computes(pipeline: PipelineFactory) -> None:
    p = pipeline(SteppedRunner, start=False, max_batch_size=2)
    ids = p.submit(*texts("step", 6))
    p.batcher.hand_in(ids)
    p.batcher.start()
    p.runner.step.release()  # the first batch of the window only
    wait_until(lambda: [row.status for row in p.rows(ids)].count("succeeded") == 2, timeout=10,
               what="the first batch written before the next one runs")
    assert [row.status for row in p.rows(ids)].count("running") == 4
    for _ in range(2):
        p.runner.step.release()
    assert p.batcher.wait_idle(timeout=30)
    assert [row.status for row in p.rows(ids)] == ["succeeded"] * 6


def test_a_bad_input_fails_alone_and_the_rest_succeed(pipeline: PipelineFactory) -> None:
    p = pipeline(FailingRunner, start=False, max_batch_size=16)
    job_texts = [*texts("good", 4), "BAD input", *texts("fine", 6)]
    ids = p.submit(*job_texts)
    p.batcher.hand_in(ids)
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    rows = p.rows(ids)
    assert [row.status for row in rows] == ["succeeded"] * 4 + ["failed"] + ["succeeded"] * 6
    bad = rows[4]
    assert (bad.error_type, bad.error_message, bad.output) == ("ValueError", "model cannot handle this input", None)
    assert [row.output["label"] for row in rows if row.status == "succeeded"] == [t.upper() for t in job_texts if "BAD" not in t]


def test_out_of_memory_splits_the_batch_and_releases_a_job_too_big_alone(pipeline: PipelineFactory) -> None:
    p = pipeline(MemoryHungryRunner, start=False, max_batch_size=16, options={"max_fit": 2},
                 policy=RetryPolicy(backoff_s=30))
    ids = p.submit(*texts("fit", 6), "HUGE input")
    p.batcher.hand_in(ids)
    before = utcnow()
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    *fitting, huge = p.rows(ids)
    assert [row.status for row in fitting] == ["succeeded"] * 6
    assert (huge.status, huge.attempts, huge.worker, huge.lease_until, huge.error_type) == ("queued", 1, None, None, None)
    assert huge.retry_at is not None
    assert before + timedelta(seconds=30) <= huge.retry_at <= utcnow() + timedelta(seconds=30)
    assert [(o.id, o.kind, o.retry_at) for o in p.released] == [(huge.id, OutcomeKind.RELEASED, huge.retry_at)]

    again = p.run([huge.id])[0]  # a message before its retry_at: the claim leaves it alone
    assert (again.status, again.attempts) == ("queued", 1)


def test_a_job_whose_deadline_passes_while_claimed_expires_unrun(pipeline: PipelineFactory) -> None:
    p = pipeline(GatedRunner, max_batch_size=1)
    blocker, late = p.submit("blocker")[0], p.submit("late", expires_at=utcnow() + timedelta(seconds=1))[0]
    p.batcher.hand_in([blocker])
    assert p.runner.started.wait(10)
    p.batcher.hand_in([late])  # claimed one batch ahead while the model is busy
    wait_until(lambda: p.rows([late])[0].status == "running", timeout=10, what="the late job claimed")
    expires_at = p.rows([late])[0].expires_at
    assert expires_at is not None
    wait_until(lambda: utcnow() > expires_at, timeout=10, what="the late job's deadline")
    p.runner.gate.set()
    assert p.batcher.wait_idle(timeout=30)
    first, second = p.rows([blocker, late])
    assert first.status == "succeeded"
    assert (second.status, second.error_type, second.attempts, second.output) == ("expired", "DeadlineExceeded", 1, None)
    assert [batch for _, batch in p.runner.batches] == [["blocker"]]


def test_a_deadline_that_passes_while_its_window_computes_ends_the_job_unrun(pipeline: PipelineFactory) -> None:
    p = pipeline(SteppedRunner, start=False, max_batch_size=2)
    early = p.submit("a", "b")
    [late] = p.submit("the longest text: its group runs last", expires_at=utcnow() + timedelta(seconds=1))
    p.batcher.hand_in([*early, late])  # one window, two groups: the late job's waits for the first
    p.batcher.start()
    wait_until(lambda: p.rows([late])[0].status == "running", timeout=10, what="the window claimed")
    expires_at = p.rows([late])[0].expires_at
    assert expires_at is not None
    wait_until(lambda: utcnow() > expires_at, timeout=10, what="the late job's deadline")
    p.runner.step.release()  # the first group only
    assert p.batcher.wait_idle(timeout=30)
    rows = p.rows([*early, late])
    assert [row.status for row in rows] == ["succeeded", "succeeded", "expired"]
    assert (rows[2].error_type, rows[2].output) == ("DeadlineExceeded", None)
    assert [batch for _, batch in p.runner.batches] == [["a", "b"]]


def test_retry_with_a_delay_releases_the_job_until_then(pipeline: PipelineFactory) -> None:
    p = pipeline(RetryingRunner)
    job = p.submit("RETRY-ONCE DELAY=60")[0]
    before = utcnow()
    row = p.run([job])[0]
    assert (row.status, row.attempts, row.output) == ("queued", 1, None)
    assert row.retry_at is not None
    assert before + timedelta(seconds=60) <= row.retry_at <= utcnow() + timedelta(seconds=60)
    assert p.run([job])[0].attempts == 1, "not claimed before its retry_at"

    p.make_due(job)
    row = p.run([job])[0]
    assert (row.status, row.attempts, row.output["label"]) == ("succeeded", 2, "RETRY-ONCE DELAY=60")


def test_retry_without_a_delay_backs_off_by_the_policy_then_fails_after_max_attempts(pipeline: PipelineFactory) -> None:
    p = pipeline(RetryingRunner, policy=RetryPolicy(max_attempts=3, backoff_s=10, max_backoff_s=15))
    job = p.submit("RETRY always")[0]
    for attempt, backoff in [(1, 10), (2, 15)]:  # 10 s, then 20 s capped at 15 s
        before = utcnow()
        row = p.run([job])[0]
        assert (row.status, row.attempts) == ("queued", attempt)
        assert row.retry_at is not None
        assert before + timedelta(seconds=backoff) <= row.retry_at <= utcnow() + timedelta(seconds=backoff)
        p.make_due(job)
    row = p.run([job])[0]
    assert (row.status, row.attempts, row.error_type) == ("failed", 3, "MaxAttemptsExceeded")
    assert row.error_message == "Retry: service busy for RETRY always (attempts exhausted: 3 of 3)"
    assert len(p.released) == 2


def test_retry_releases_every_job_of_its_batch(pipeline: PipelineFactory) -> None:
    p = pipeline(RetryingRunner, start=False, max_batch_size=8)
    ids = p.submit("RETRY-ONCE DELAY=60", *texts("neighbour", 3))
    p.batcher.hand_in(ids)
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    assert [(row.status, row.attempts) for row in p.rows(ids)] == [("queued", 1)] * 4
    assert p.runner.batches == [], "a Retry is not split: the model ran no part of the batch"
    assert {o.id for o in p.released} == set(ids)


def test_an_output_count_mismatch_fails_only_the_job_that_causes_it(pipeline: PipelineFactory) -> None:
    p = pipeline(MiscountingRunner, start=False, max_batch_size=8)
    ids = p.submit(*texts("ok", 3), "MISCOUNT")
    p.batcher.hand_in(ids)
    p.batcher.start()
    assert p.batcher.wait_idle(timeout=30)
    *good, bad = p.rows(ids)
    assert [row.status for row in good] == ["succeeded"] * 3
    assert (bad.status, bad.error_type, bad.error_message) == ("failed", "RuntimeError", "runner returned 0 outputs for 1 inputs")


def test_the_batcher_holds_the_leases_of_claimed_jobs_until_they_are_written(pipeline: PipelineFactory) -> None:
    p = pipeline(GatedRunner, max_batch_size=2)
    ids = p.submit("held-1", "held-2")
    p.batcher.hand_in(ids)
    assert p.runner.started.wait(10)
    assert sorted(p.batcher.leased()) == sorted(ids)  # what the heartbeat renews
    p.runner.gate.set()
    assert p.batcher.wait_idle(timeout=30)
    assert p.batcher.leased() == []


def test_a_job_whose_result_cannot_be_written_is_let_go(pipeline: PipelineFactory) -> None:
    p = pipeline(GatedRunner, max_batch_size=1)
    [job_id] = p.submit("unwritable")
    p.batcher.hand_in([job_id])
    assert p.runner.started.wait(10)
    with p.sessions.begin() as session:  # every write of the result fails (not a transient error)
        session.execute(text("CREATE TRIGGER refuse BEFORE UPDATE ON jobs BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    p.runner.gate.set()
    assert p.batcher.wait_idle(timeout=30)
    assert p.rows([job_id])[0].status == "running"  # its lease lapses, then the sweeper brings it back
    assert p.batcher.leased() == []  # so no heartbeat keeps it alive

