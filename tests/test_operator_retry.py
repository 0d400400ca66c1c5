"""Operator retries of failed jobs (Client, HTTP and CLI) against a real worker: the `flaky` model
fails a "FLAKY" text the first time and succeeds after, so a retried job comes through."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from db.models import utcnow
from producer import Client
from producer.contract import JobView
from producer.errors import InvalidJobError, JobNotFoundError, JobNotRetryableError
from producer.gateway import GatewaySettings, create_app
from producer.retries import retry_matching
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
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
    assert (done.matched, done.retried) == (5, 5)
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
    assert api.post("/v1/jobs/retry", json=body).json() == {"matched": 1, "retried": 0, "dry_run": True}
    assert api.post("/v1/jobs/retry", json={**body, "dry_run": False}).json() == {"matched": 1, "retried": 1, "dry_run": False}
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
