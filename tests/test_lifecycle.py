"""Cancel, deadlines, idempotency keys and priorities, against a real worker."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from producer import Client
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import computed_texts, unique_text, wait_until


def test_cancelled_queued_job_is_never_computed(isolated_backend: Backend) -> None:
    # Cancelled before any worker runs, so no claim can race the cancel: its message is still handed
    # to the worker, ahead of the jobs after it, and the claim must skip it.
    env = {**isolated_backend.env, "TEXTQ_WORKER_MODELS": "echo"}
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        victim_text = unique_text("cancel-queued")
        victim = client.classify(victim_text, model="echo")
        assert client.cancel(victim.id).status == "cancelled"
        after = [client.classify(unique_text("after"), model="echo").id for _ in range(3)]
        with WorkerProcess(env=env, name="cancel"):
            client.wait_many(after, timeout=60)
        # The worker stopped gracefully: every message it took, the victim's first, was handled.
        assert client.get(victim.id).status == "cancelled"
    assert computed_texts("echo")[victim_text] == 0


def test_cancelled_running_job_keeps_no_result(worker: WorkerProcess, client: Client) -> None:
    job = client.classify(unique_text("cancel-running"), model="slow")
    wait_until(lambda: client.get(job.id).status == "running", what="job running")
    assert client.cancel(job.id).status == "cancelled"
    time.sleep(1.5)  # the batch ends and tries to write
    view = client.get(job.id)
    assert view.status == "cancelled"
    assert view.output is None


def test_cancelling_a_finished_job_changes_nothing(worker: WorkerProcess, client: Client) -> None:
    done = client.wait(client.classify(unique_text("done"), model="echo").id, timeout=30)
    assert client.cancel(done.id).status == "succeeded"


def test_job_past_its_deadline_expires_unrun(worker: WorkerProcess, client: Client) -> None:
    client.submit_many([{"text": unique_text("backlog"), "model": "slow"} for _ in range(8)])
    # Longer than the backlog's texts: claimed in the backlog's window (when the worker was slow to
    # read the messages), it sorts into the last group, which starts after the others' 2 s.
    text = unique_text("deadline") + " and a tail that makes it the longest text of the window"
    view = client.wait(client.classify(text, model="slow", timeout=0.5).id, timeout=60)
    assert view.status == "expired"
    assert view.error_type == "DeadlineExceeded"
    assert computed_texts("slow")[text] == 0


def test_idempotency_key_returns_the_same_job_under_concurrent_submits(worker: WorkerProcess, backend: Backend) -> None:
    key = f"order-{uuid.uuid4()}"

    def submit(_: int) -> uuid.UUID:
        with Client(database_url=backend.database_url, broker_url=backend.broker_url) as c:
            return c.classify("same request", model="echo", idempotency_key=key).id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(submit, range(16)))
    assert len(ids) == 1
    with Client(database_url=backend.database_url, broker_url=backend.broker_url) as c:
        assert c.wait(ids.pop(), timeout=30).status == "succeeded"


def test_high_priority_jobs_overtake_a_low_priority_backlog(isolated_backend: Backend) -> None:
    env = {**isolated_backend.env, "TEXTQ_WORKER_MODELS": "echo", "TEXTQ_WORKER_PREFETCH_MULTIPLIER": "1"}
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        # One job per message, so that message order is job order; submitted before any worker runs.
        low = [client.classify(unique_text("low"), model="echo", priority=9).id for _ in range(40)]
        high = [client.classify(unique_text("high"), model="echo", priority=0).id for _ in range(5)]
        with WorkerProcess(env=env, name="priority"):
            views = {v.id: v for v in client.wait_many(low + high, timeout=120)}
    # A job's position: how many jobs finished strictly before it. Jobs of one batch share one
    # finished_at, so a sorted list would rank a tie by dict order (the low ones first).
    finished = [v.finished_at for v in views.values()]
    high_positions = [sum(f < views[i].finished_at for f in finished) for i in high]  # type: ignore[operator]
    assert max(high_positions) < 15, high_positions  # all five ran before most of the backlog
