"""Operator retries of failed jobs (Client, HTTP and CLI) against a real worker: the `flaky` model
fails a "FLAKY" text the first time and succeeds after, so a retried job comes through."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from db.models import utcnow
from producer import Client
from producer.contract import JobView
from producer.errors import InvalidJobError, JobNotFoundError, JobNotRetryableError
from producer.gateway import GatewaySettings, create_app
from producer.retries import retry_matching
from producer.worker_process import WorkerProcess
from tests.conftest import Backend, new_backend
from tests.helpers import unique_text
from tests.test_cli import textq

KEY = "retry-key-" + uuid.uuid4().hex
READ_ONLY_KEY = "retry-reader-" + uuid.uuid4().hex


def _failed_flaky(client: Client, count: int = 1) -> list[JobView]:
    jobs = client.submit_many([{"text": unique_text("FLAKY"), "model": "flaky"} for _ in range(count)])
    views = client.wait_many([j.id for j in jobs], timeout=60)
    assert [v.status for v in views] == ["failed"] * count, views
    return views


@pytest.fixture()
def api(client: Client) -> Iterator[TestClient]:
    app = create_app(client, GatewaySettings(keys=[KEY, f"{READ_ONLY_KEY}:default:read"]))
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


def test_a_retried_job_goes_back_to_queued_with_its_history_and_then_succeeds(worker: WorkerProcess, client: Client) -> None:
    failed = _failed_flaky(client)[0]
    assert failed.error_type == "ValueError" and failed.attempts == 1

    retried = client.retry(failed.id)
    assert retried.status == "queued"
    assert retried.previous_error is not None and retried.previous_error.startswith("ValueError: first try of")
    assert (retried.attempts, retried.retried_attempts) == (0, 1)
    assert retried.error_type is None and retried.finished_at is None and retried.retried_at is not None

    done = client.wait(failed.id, timeout=60)
    assert done.status == "succeeded", done.error_message
    assert (done.attempts, done.retried_attempts) == (1, 1)
    assert done.previous_error == retried.previous_error


def test_a_bulk_retry_counts_first_then_retries_in_batches(worker: WorkerProcess, client: Client) -> None:
    since = utcnow()
    failed = _failed_flaky(client, 5)

    counted = client.retry_matching(status="failed", model="flaky", since=since, dry_run=True)
    assert (counted.matched, counted.retried, counted.dry_run) == (5, 0, True)
    assert {v.status for v in client.get_many([v.id for v in failed])} == {"failed"}  # a dry run changes nothing

    done = retry_matching(client, model="flaky", error_type="ValueError", since=since, batch_size=2)
    assert (done.matched, done.retried, done.batches) == (5, 5, 3)
    views = client.wait_many([v.id for v in failed], timeout=60)
    assert {v.status for v in views} == {"succeeded"}

    nothing = client.retry_matching(model="flaky", since=since)
    assert (nothing.matched, nothing.retried) == (0, 0)
    assert client.retry_matching(model="no-such-model").matched == 0


def test_retrying_a_job_that_is_not_failed_or_does_not_exist_is_refused(worker: WorkerProcess, client: Client) -> None:
    ok = client.wait(client.submit({"text": unique_text("fine"), "model": "echo"}).id, timeout=60)
    with pytest.raises(JobNotRetryableError, match="is succeeded: only a failed job"):
        client.retry(ok.id)
    assert client.get(ok.id).status == "succeeded"
    with pytest.raises(JobNotFoundError):
        client.retry(uuid.uuid4())
    with pytest.raises(JobNotFoundError):
        client.retry("not-a-uuid")
    with pytest.raises(InvalidJobError, match="status"):
        client.retry_matching(status="succeeded")
    with pytest.raises(InvalidJobError, match="since"):
        client.retry_matching(since=utcnow().replace(tzinfo=None))


def test_another_tenants_failed_job_cannot_be_retried(worker: WorkerProcess, client: Client) -> None:
    failed = _failed_flaky(client.for_tenant("acme"))[0]
    with pytest.raises(JobNotFoundError):
        client.for_tenant("other").retry(failed.id)
    assert client.for_tenant("other").retry_matching(model="flaky").matched == 0
    assert client.for_tenant("acme").retry(failed.id).status == "queued"


def test_retry_over_http_one_job_and_in_bulk(worker: WorkerProcess, client: Client, api: TestClient) -> None:
    since = utcnow() - timedelta(seconds=1)
    first, second = _failed_flaky(client, 2)

    response = api.post(f"/v1/jobs/{first.id}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued" and response.json()["retried_attempts"] == 1
    assert api.get(f"/v1/jobs/{first.id}", params={"wait": 60}).json()["status"] == "succeeded"

    again = api.post(f"/v1/jobs/{first.id}/retry")
    assert again.status_code == 409 and again.json()["errors"][0]["field"] == "status"
    assert api.post(f"/v1/jobs/{uuid.uuid4()}/retry").status_code == 404
    assert api.post("/v1/jobs/%3Cscript%3E/retry").status_code == 404

    body = {"model": "flaky", "since": since.isoformat(), "dry_run": True}
    assert api.post("/v1/jobs/retry", json=body).json() == {"matched": 1, "retried": 0, "dry_run": True, "batches": 0}
    assert api.post("/v1/jobs/retry", json={**body, "dry_run": False}).json() == {
        "matched": 1, "retried": 1, "dry_run": False, "batches": 1}
    assert api.get(f"/v1/jobs/{second.id}", params={"wait": 60}).json()["status"] == "succeeded"

    refused = api.post("/v1/jobs/retry", json={"status": "running"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "status"
    assert api.post("/v1/jobs/retry", json={"colour": "red"}).status_code == 422
    reader = api.post("/v1/jobs/retry", json={}, headers={"Authorization": f"Bearer {READ_ONLY_KEY}"})
    assert reader.status_code == 403 and "cancel" in reader.json()["detail"]


def test_retry_from_the_command_line(worker: WorkerProcess, client: Client, backend: Backend) -> None:
    failed = _failed_flaky(client)[0]
    counted = textq("retry", "--status", "failed", "--model", "flaky", "--since", "1h", "--dry-run", env=backend.env)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.startswith("1 failed jobs match")
    one = textq("retry", str(failed.id), env=backend.env)
    assert one.returncode == 0, one.stderr
    assert f"{failed.id} queued" in one.stdout
    assert client.wait(failed.id, timeout=60).status == "succeeded"
    refused = textq("retry", str(failed.id), env=backend.env)
    assert refused.returncode != 0 and "only a failed job can be retried" in refused.stderr
    bad = textq("retry", "--status", "failed", "--since", "soon", env=backend.env)
    assert bad.returncode != 0 and "--since" in bad.stderr


# Jobs by SQL, several per created_at (the keyset's ties): `m` failed `flaky` jobs with ValueError that
# the filter matches, then 100 each that it must leave alone: another error, not failed, another model.
_JOBS_BY_SQL = """
INSERT INTO jobs (id, model, task, status, input, error_type, error_message, attempts, priority,
                  created_at, finished_at, published_at, publish_count, retried_attempts)
SELECT gen_random_uuid(), CASE WHEN i > :m + 200 THEN 'other' ELSE 'flaky' END, 'classify',
       CASE WHEN i > :m + 100 AND i <= :m + 200 THEN 'succeeded' ELSE 'failed' END, '{"text": "bulk"}'::jsonb,
       CASE WHEN i <= :m OR i > :m + 200 THEN 'ValueError' WHEN i <= :m + 100 THEN 'TimeoutError' END,
       'first try', 2, 5, date_trunc('second', now()) - make_interval(secs => i % 500), now(), now(), 1, 0
FROM generate_series(1, :m + 300) AS i
"""


def test_a_bulk_retry_of_thousands_of_rows_goes_in_batches_and_says_how_many() -> None:
    matching, batch = 3000, 256
    # No worker: the retried rows stay queued to be read.
    with new_backend("postgresql", "bulk-retry") as pg, Client(database_url=pg.database_url, broker_url=pg.broker_url) as client:
        with client.sessions.begin() as session:
            session.execute(text(_JOBS_BY_SQL), {"m": matching})
        env = {**pg.env, "TEXTQ_RETRY_BATCH_SIZE": str(batch)}
        args = ("retry", "--status", "failed", "--model", "flaky", "--error-type", "ValueError")
        counted = textq(*args, "--dry-run", env=env)
        assert counted.stdout.strip() == "3,000 failed jobs match (dry run: none retried)", counted.stderr
        done = textq(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "retried 3,000 of 3,000 matching failed jobs in 12 batches"  # 11 x 256 + 184
        with client.sessions() as session:
            rows = session.execute(text(
                "SELECT model, status, error_type, previous_error, attempts, retried_attempts, count(*) "
                "FROM jobs GROUP BY 1, 2, 3, 4, 5, 6")).tuples().all()
        assert sorted(rows, key=str) == sorted([
            ("flaky", "queued", None, "ValueError: first try", 0, 2, matching),
            ("flaky", "failed", "TimeoutError", None, 2, 0, 100),
            ("flaky", "succeeded", None, None, 2, 0, 100),
            ("other", "failed", "ValueError", None, 2, 0, 100),
        ], key=str)
        assert client.publisher.queue_depth("flaky") > 0  # published, for a worker to take
        again = textq(*args, env=env)
        assert again.stdout.strip() == "no failed jobs match: none retried", again.stderr
