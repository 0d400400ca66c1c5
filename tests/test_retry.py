"""A runner's Retry against real workers, and the worker's delayed publisher in-process."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest

from db.models import utcnow
from producer import Client
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import rows, unique_text, wait_until
from worker.delayed_publish import DelayedPublisher
from worker.retry import Retry, RetryPolicy


def test_the_policy_backs_off_exponentially_up_to_its_cap_unless_retry_names_a_delay() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_s=2, max_backoff_s=5)
    assert [policy.delay(Retry(), attempt).total_seconds() for attempt in (1, 2, 3)] == [2, 4, 5]
    assert policy.delay(Retry(delay=0.5), 3) == timedelta(seconds=0.5)
    assert [policy.exhausted(attempt) for attempt in (3, 4)] == [False, True]
    assert policy.releases(Retry()) and not policy.releases(ValueError("bad input"))
    with pytest.raises(ValueError, match="Retry delay must be >= 0 seconds, got -1"):
        Retry(delay=-1)


def test_delayed_publisher_publishes_each_job_at_its_time_and_drops_the_rest_on_stop() -> None:
    published: list[tuple[datetime, list[uuid.UUID]]] = []
    done = threading.Event()

    def publish(job_ids: list[uuid.UUID]) -> None:
        published.append((utcnow(), job_ids))
        done.set()

    delayed = DelayedPublisher(publish)
    delayed.start()
    soon, later, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    delayed.schedule(now + timedelta(hours=1), [never])
    delayed.schedule(now + timedelta(seconds=0.4), [later])
    delayed.schedule(now + timedelta(seconds=0.2), [soon])
    wait_until(lambda: len(published) == 2, timeout=10, what="both due jobs published")
    delayed.stop()
    assert [ids for _, ids in published] == [[soon], [later]]
    assert published[0][0] >= now + timedelta(seconds=0.2)
    assert published[1][0] >= now + timedelta(seconds=0.4)
    assert delayed.pending() == 1


def test_a_retry_runs_the_job_again_after_its_delay(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    text = unique_text("RETRY-ONCE DELAY=1")
    view = client.wait(client.classify(text, model="retrying").id, timeout=60)
    assert (view.status, view.attempts, view.output["label"]) == ("succeeded", 2, text.upper())
    assert view.started_at is not None
    assert view.started_at - view.created_at >= timedelta(seconds=1), "not run again before its delay"
    assert rows(backend, [view.id])[0].publish_count == 1, "the worker published it again itself, not the sweeper"


def test_a_retry_without_delay_waits_out_the_policy_backoff(worker: WorkerProcess, client: Client) -> None:
    view = client.wait(client.classify(unique_text("RETRY-ONCE"), model="retrying").id, timeout=60)
    assert (view.status, view.attempts) == ("succeeded", 2)
    assert view.started_at is not None
    assert view.started_at - view.created_at >= timedelta(seconds=RetryPolicy().backoff_s)


def test_a_job_that_keeps_asking_for_a_retry_fails_once_its_attempts_are_used_up(worker: WorkerProcess, client: Client) -> None:
    text = unique_text("RETRY DELAY=0.2")
    view = client.wait(client.classify(text, model="retrying").id, timeout=60)
    assert (view.status, view.attempts, view.error_type) == ("failed", 3, "MaxAttemptsExceeded")
    assert view.error_message == f"Retry: service busy for {text} (attempts exhausted: 3 of 3)"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_released_job_whose_worker_dies_is_brought_back_by_the_sweeper_after_its_retry_at(
    isolated_backend: Backend,
) -> None:
    env = {**isolated_backend.env, "TEXTQ_WORKER_MODELS": "retrying"}
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        first = WorkerProcess(env=env).start()
        job = client.classify(unique_text("RETRY-ONCE DELAY=4"), model="retrying").id
        # One read per check: two reads could see `queued` before the claim and attempts 1 after it.
        wait_until(lambda: (lambda row: (row.status, row.attempts) == ("queued", 1))(rows(isolated_backend, [job])[0]),
                   what="the job released for a retry")
        first.kill()  # its schedule of the job's next message dies with it
        retry_at = rows(isolated_backend, [job])[0].retry_at
        assert retry_at is not None
        with WorkerProcess(env=env):
            view = client.wait(job, timeout=60)
    assert (view.status, view.attempts) == ("succeeded", 2)
    assert view.started_at is not None and view.started_at >= retry_at
    assert rows(isolated_backend, [job])[0].publish_count == 2, "the sweeper re-published it"
