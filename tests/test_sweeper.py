"""Jobs that must not stay queued forever: lost behind rows in backoff, never published, of a model
no registry knows, or in a batch with a row whose stored input cannot be read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import String, cast, delete, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB

from db import store, sweeps, upgrade
from db.engine import session_factory, shared_engine
from db.models import Job, JobStatus, utcnow
from producer import Client
from producer.worker_process import WorkerProcess
from tests.conftest import TEST_ROOT, Backend
from tests.helpers import publisher, unique_text, wait_until
from tests.services import create_postgres_database, drop_postgres_database

STALE = timedelta(seconds=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty, migrated database of each kind that no worker reads (for store-level tests)."""
    if request.param == "sqlite":
        url = f"sqlite:///{TEST_ROOT / f'sweeper-{uuid.uuid4().hex[:8]}.db'}"
        upgrade(url)
        yield url
        return
    url, name = create_postgres_database()
    upgrade(url)
    yield url
    shared_engine.cache_clear()
    drop_postgres_database(name)


@dataclass(frozen=True)
class Rows:
    """Queued rows written around the producer, with a publish history of the test's choosing."""

    model: str
    count: int = 1
    priority: int = 5
    published_ago: timedelta | None = timedelta(0)  # None: never published
    publish_count: int = 1
    created_ago: timedelta = timedelta(0)
    status: JobStatus = JobStatus.QUEUED


def add(database_url: str, rows: Rows) -> list[uuid.UUID]:
    now = utcnow()
    new_jobs = [
        store.NewJob(model=rows.model, task="classify", input={"text": unique_text(rows.model)}, priority=rows.priority,
                     created_at=now - rows.created_ago)
        for _ in range(rows.count)
    ]
    with session_factory(database_url).begin() as session:
        ids = store.create_jobs(session, jobs=new_jobs)
        session.execute(
            update(Job).where(Job.id.in_(ids)).values(
                published_at=None if rows.published_ago is None else now - rows.published_ago,
                publish_count=rows.publish_count, status=rows.status),
            execution_options={"synchronize_session": False},
        )
    return ids


def republished(database_url: str, *, keep: bool = True, **options: Any) -> set[uuid.UUID]:
    """Ids jobs_to_republish picks; with keep=False the marks it writes are rolled back."""
    options = {"stale_after": STALE, "limit": 1000, **options}
    with session_factory(database_url).begin() as session:
        picked = {job_id for job_id, _, _ in sweeps.jobs_to_republish(session, **options)}
        if not keep:
            session.rollback()
    return picked


def statuses(database_url: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str | None, str | None]]:
    """(status, error_type, error_message) by id, read without the input column (it may be unreadable)."""
    with session_factory(database_url)() as session:
        found = session.execute(select(Job.id, Job.status, Job.error_type, Job.error_message).where(Job.id.in_(ids)))
        return {job_id: (status, error_type, message) for job_id, status, error_type, message in found.tuples()}


# -- the sweeper's query --------------------------------------------------------------------------

def test_a_lost_job_is_republished_whatever_number_of_jobs_in_backoff_sorts_before_it(database_url: str) -> None:
    # 1,200 jobs (say of a model no worker serves) re-published 3 times, the last 5 minutes ago:
    # they wait 8 x 60 s before the next. They all sort before the lost job (priority 0 first).
    in_backoff = add(database_url, Rows(unique_text("backoff"), count=1200, priority=0,
                                        published_ago=timedelta(minutes=5), publish_count=4))
    [lost] = add(database_url, Rows(unique_text("lost"), priority=9, published_ago=timedelta(minutes=10),
                                    created_ago=timedelta(minutes=10)))
    assert republished(database_url, limit=1000) == {lost}
    assert not set(in_backoff) & republished(database_url, limit=1000)


def test_the_limit_counts_only_jobs_that_are_due(database_url: str) -> None:
    add(database_url, Rows(unique_text("backoff"), count=30, priority=0, published_ago=timedelta(minutes=5), publish_count=6))
    due = add(database_url, Rows(unique_text("due"), count=10, priority=1, published_ago=timedelta(minutes=5)))
    first = republished(database_url, limit=4)
    assert len(first) == 4 and first <= set(due)
    assert republished(database_url, limit=100) == set(due) - first  # the first four were marked published


@pytest.mark.parametrize(("publish_count", "published_ago_s", "max_backoff_s", "due"), [
    (1, 59, None, False), (1, 61, None, True),  # the first re-publish after stale_after
    (0, 61, None, True),  # a row written around the producer, never counted
    (3, 239, None, False), (3, 241, None, True),  # 2 ** (3 - 1) x 60 s
    (6, 1919, None, False), (6, 1921, None, True),  # 32 x 60 s: the default cap
    (40, 1919, None, False), (40, 1921, None, True),
    (3, 99, 100, False), (3, 101, 100, True),  # a cap of the caller's choosing
    (2, 119, 100, True), (9, 101, 100, True),
    (2, 119, 7200, False), (9, 7199, 7200, False), (9, 7201, 7200, True),
])
def test_queued_jobs_are_republished_with_a_doubling_capped_backoff(
    database_url: str, publish_count: int, published_ago_s: int, max_backoff_s: int | None, due: bool
) -> None:
    [job] = add(database_url, Rows(unique_text("backoff"), published_ago=timedelta(seconds=published_ago_s),
                                   publish_count=publish_count))
    cap = {} if max_backoff_s is None else {"max_backoff": timedelta(seconds=max_backoff_s)}
    assert (job in republished(database_url, **cap)) is due


def test_a_job_never_published_is_republished_at_once_even_behind_a_waiting_message(database_url: str) -> None:
    model = unique_text("unpublished")
    [head] = add(database_url, Rows(model, published_ago=timedelta(minutes=5)))  # its message is next in line
    [never] = add(database_url, Rows(model, published_ago=None, publish_count=0))
    with session_factory(database_url)() as session:
        waiting_since = sweeps.earliest_published(session, ids=[head])
    assert republished(database_url, keep=False, waiting_since={model: waiting_since}) == {never}
    assert republished(database_url, keep=False, waiting_since={model: None}) == {never}  # a queue not peeked at
    assert republished(database_url, keep=False) == {head, never}  # an empty queue


def test_a_waiting_message_whose_jobs_were_never_marked_published_counts_from_their_creation(database_url: str) -> None:
    [head] = add(database_url, Rows(unique_text("head"), published_ago=None, created_ago=timedelta(minutes=3)))
    with session_factory(database_url)() as session:
        since = sweeps.earliest_published(session, ids=[head, uuid.uuid4()])
        created = session.execute(select(Job.created_at).where(Job.id == head)).scalar_one()
    assert since == created


def test_running_jobs_with_an_expired_lease_are_still_republished(database_url: str) -> None:
    [expired] = add(database_url, Rows(unique_text("leased"), status=JobStatus.RUNNING, publish_count=5))
    [held] = add(database_url, Rows(unique_text("leased"), status=JobStatus.RUNNING))
    with session_factory(database_url).begin() as session:
        session.execute(update(Job).where(Job.id == expired).values(lease_until=utcnow() - timedelta(seconds=1)))
        session.execute(update(Job).where(Job.id == held).values(lease_until=utcnow() + timedelta(minutes=5)))
    assert republished(database_url) == {expired}


def test_queued_jobs_of_unknown_models_fail_once_queued_for_the_grace_period(database_url: str) -> None:
    ghost = unique_text("ghost")
    [old_ghost] = add(database_url, Rows(ghost, created_ago=timedelta(minutes=2)))
    [new_ghost] = add(database_url, Rows(ghost))  # a producer may know a model before the workers do
    [known] = add(database_url, Rows("echo", created_ago=timedelta(minutes=2)))
    [running_ghost] = add(database_url, Rows(ghost, created_ago=timedelta(minutes=2), status=JobStatus.RUNNING))
    with session_factory(database_url).begin() as session:
        failed = sweeps.fail_unknown_model_jobs(session, known_models=["echo", "sentiment"],
                                               created_before=utcnow() - STALE)
    assert failed == 1
    found = statuses(database_url, [old_ghost, new_ghost, known, running_ghost])
    assert found[old_ghost] == (
        "failed", "UnknownModel", f"no model named {ghost!r} in this deployment's registry (TEXTQ_MODELS_FILE)")
    assert [found[i][0] for i in (new_ghost, known, running_ghost)] == ["queued", "queued", "running"]


# -- with a real worker ---------------------------------------------------------------------------

def _write_input(backend: Backend, job_id: uuid.UUID, stored: str) -> None:
    """Store `stored` as the row's input text as it is, as a hand-written UPDATE would."""
    value = cast(literal(stored, String()), JSONB) if backend.name == "postgresql" else literal(stored, String())
    with session_factory(backend.database_url).begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(input=value),
                        execution_options={"synchronize_session": False})


def test_a_row_whose_stored_input_cannot_be_read_fails_alone_and_its_batch_runs(
    worker: WorkerProcess, client: Client, backend: Backend
) -> None:
    unreadable = {"scalar": '"just a string"', "array": '[{"text": "in a list"}]', "null": "null"}
    if backend.name == "sqlite":  # jsonb cannot hold invalid JSON; SQLite stores any text
        unreadable |= {"not json": "not json", "truncated": '{"text": "cut off'}
    bad = {name: add(backend.database_url, Rows("echo"))[0] for name in unreadable}
    for name, stored in unreadable.items():
        _write_input(backend, bad[name], stored)
    good = add(backend.database_url, Rows("echo", count=3))  # no message of their own
    try:
        publisher(backend).publish("echo", 5, [*bad.values(), *good])  # one message, one batch
        assert [v.status for v in client.wait_many(good, timeout=30)] == ["succeeded"] * 3
        wait_until(lambda: all(s[0] == "failed" for s in statuses(backend.database_url, list(bad.values())).values()),
                   what="the unreadable rows to fail")
        found = statuses(backend.database_url, list(bad.values()))
        messages = {name: found[job_id][2] for name, job_id in bad.items()}
        assert {found[job_id][1] for job_id in bad.values()} == {"InvalidJobError"}
        assert messages["scalar"] == "invalid job request: input: stored input is a JSON string, not an object"
        assert messages["array"] == "invalid job request: input: stored input is a JSON array, not an object"
        assert messages["null"] == "invalid job request: input: stored input is a JSON null, not an object"
        if backend.name == "sqlite":
            assert (messages["not json"] or "").startswith(
                "invalid job request: input: stored input is not valid JSON (Expecting value: line 1 column 1")
            assert "stored input is not valid JSON (Unterminated string" in (messages["truncated"] or "")
            # Reads of such a row work too: the stored text comes back as it is.
            assert client.get(bad["not json"]).input == "not json"
            assert client.get(bad["truncated"]).input == '{"text": "cut off'
    finally:  # rows that cannot be read back would trip up later readers of the shared table
        with session_factory(backend.database_url).begin() as session:
            session.execute(delete(Job).where(Job.id.in_(list(bad.values()))))


def test_a_row_never_published_is_published_by_the_sweeper(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    [job] = add(backend.database_url, Rows("echo", published_ago=None, publish_count=0))
    assert client.wait(job, timeout=30).status == "succeeded"


def test_a_job_of_a_model_no_registry_knows_fails_after_the_republish_period(
    worker: WorkerProcess, client: Client, backend: Backend
) -> None:
    ghost = unique_text("ghost")
    [job] = add(backend.database_url, Rows(ghost))
    view = client.wait(job, timeout=30)
    assert (view.status, view.error_type) == ("failed", "UnknownModel")
    assert view.error_message == f"no model named {ghost!r} in this deployment's registry (TEXTQ_MODELS_FILE)"
    assert view.finished_at is not None
    republish_after = float(backend.env["TEXTQ_REPUBLISH_AFTER_S"])
    assert (view.finished_at - view.created_at).total_seconds() >= republish_after


def test_a_worker_republishes_a_lost_job_behind_a_thousand_jobs_in_backoff(isolated_backend: Backend) -> None:
    """The sweeper reads at most 1,000 rows a round: rows in backoff must not fill them."""
    env = {**isolated_backend.env, "TEXTQ_WORKER_MODELS": "echo"}
    # Jobs of a model this deployment knows but no worker serves, re-published 5 times: 64 s apart.
    add(isolated_backend.database_url, Rows("null", count=1200, priority=0, publish_count=6))
    [lost] = add(isolated_backend.database_url, Rows("echo", priority=9, published_ago=timedelta(minutes=10),
                                                     created_ago=timedelta(minutes=10)))
    with (WorkerProcess(env=env, name="sweeper", log_path=TEST_ROOT / "worker-sweeper.log"),
          Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client):
        assert client.wait(lost, timeout=30).status == "succeeded"
