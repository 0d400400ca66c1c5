"""The HTTP gateway against a real worker, Redis and database: submit, read, list, cancel over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import session_factory
from db.models import Job
from producer import Client
from producer.gateway import GatewayConfigError, GatewaySettings, create_app
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import unique_text

KEY = "test-key-" + uuid.uuid4().hex
MAX_BODY = 64 * 1024


@pytest.fixture()
def api(client: Client) -> Iterator[TestClient]:
    app = create_app(client, GatewaySettings(keys=["old-key", KEY], max_body_bytes=MAX_BODY))
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as http:
        yield http


def _count_rows(backend: Backend) -> int:
    with session_factory(backend.database_url)() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _wait(api: TestClient, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/jobs/{job_id}", params={"wait": 60})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] not in ("queued", "running"), job
    return job


def test_submit_and_get_round_trip(worker: WorkerProcess, api: TestClient) -> None:
    response = api.post("/v1/jobs", json={"task": "classify", "text": "I loved it", "model": "sentiment"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["model"] == "sentiment"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    done = _wait(api, job["id"])
    assert done["status"] == "succeeded", done["error_message"]
    assert done["output"]["label"] == "positive"
    assert api.get(f"/v1/jobs/{job['id']}").json() == done


def test_wait_returns_current_state_when_not_finished(worker: WorkerProcess, api: TestClient) -> None:
    # A model the shared worker does not serve (the GGUF LLMs): the job cannot finish during the wait,
    # however slow the machine (a `slow` job once finished while a loaded machine served the wait).
    job = api.post("/v1/jobs", json={"task": "summarize", "text": unique_text("unserved"), "style": "abstractive",
                                     "model": "abstractive"}).json()
    started = time.monotonic()
    response = api.get(f"/v1/jobs/{job['id']}", params={"wait": 0.2})
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.2, "answered before the wait ran out"
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_batch_submit(worker: WorkerProcess, api: TestClient) -> None:
    texts = [unique_text("batch") for _ in range(3)]
    response = api.post("/v1/jobs", json={"jobs": [{"text": t, "model": "echo"} for t in texts]})
    assert response.status_code == 202, response.text
    jobs = response.json()
    assert len({j["id"] for j in jobs}) == 3
    outputs = [_wait(api, j["id"])["output"] for j in jobs]
    assert [o["label"] for o in outputs] == [t.upper() for t in texts]


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"text": ""}, "text", "must not be empty"),
        ({"text": "ok", "model": "no-such-model"}, "model", "unknown model 'no-such-model'"),
        ({"text": "ok", "labels": ["a", "b", "A"]}, "labels", "duplicated"),
        ({"jobs": [{"text": "fine"}, {"text": "  "}]}, "jobs[1].text", "must not be empty"),
        ({"jobs": []}, "jobs", "non-empty list"),
        (["not", "an", "object"], "body", "JSON object"),
    ],
)
def test_invalid_request_is_422_naming_field_and_rule(
    api: TestClient, backend: Backend, body: Any, field: str, rule: str
) -> None:
    before = _count_rows(backend)
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == field and rule in e["message"] for e in errors), errors
    assert _count_rows(backend) == before


def test_malformed_json_is_422(api: TestClient, backend: Backend) -> None:
    before = _count_rows(backend)
    response = api.post("/v1/jobs", content=b'{"text": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"]
    assert _count_rows(backend) == before


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": f"Basic {KEY}"}])
def test_missing_or_wrong_key_is_401(api: TestClient, backend: Backend, headers: dict[str, str]) -> None:
    before = _count_rows(backend)
    api.headers.pop("Authorization")
    for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{uuid.uuid4()}"),
                         ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel")]:
        response = api.request(method, path, json={"text": "hello"}, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert _count_rows(backend) == before


def test_every_configured_key_works_by_either_header(api: TestClient) -> None:
    api.headers.pop("Authorization")
    assert api.get("/v1/jobs", params={"limit": 1}, headers={"X-API-Key": KEY}).status_code == 200
    assert api.get("/v1/jobs", params={"limit": 1}, headers={"Authorization": "Bearer old-key"}).status_code == 200


def test_body_over_limit_is_413(api: TestClient, backend: Backend) -> None:
    before = _count_rows(backend)
    big = {"text": "x" * MAX_BODY}
    assert api.post("/v1/jobs", json=big).status_code == 413
    # Without a Content-Length (chunked), the body is counted as it arrives.
    chunks = iter([b'{"text": "', b"x" * MAX_BODY, b'"}'])
    response = api.post("/v1/jobs", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "TEXTQ_API_MAX_BODY_BYTES" in response.json()["detail"]
    assert _count_rows(backend) == before


def test_idempotency_key_returns_the_same_job(api: TestClient, backend: Backend) -> None:
    key = uuid.uuid4().hex
    job = {"text": unique_text(), "model": "echo"}
    first = api.post("/v1/jobs", json=job, headers={"Idempotency-Key": key})
    again = api.post("/v1/jobs", json=job, headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]

    before = _count_rows(backend)
    batch = {"jobs": [{"text": unique_text(), "model": "echo"} for _ in range(3)]}
    ids = [j["id"] for j in api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": key + "-b"}).json()]
    assert [j["id"] for j in api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": key + "-b"}).json()] == ids
    assert len(set(ids)) == 3
    assert _count_rows(backend) == before + 3


def test_list_filters_and_pages_through_a_batch(worker: WorkerProcess, api: TestClient) -> None:
    # One batch: its jobs share a created_at, so pages must not cut it at a timestamp boundary.
    mine = [j["id"] for j in api.post("/v1/jobs", json={"jobs": [{"text": unique_text(), "model": "echo"}
                                                              for _ in range(5)]}).json()]
    for job_id in mine:
        _wait(api, job_id)
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"model": "echo", "status": "succeeded", "limit": 2}
    while True:
        page = api.get("/v1/jobs", params=params).json()
        assert 0 < len(page["jobs"]) <= 2
        assert {(j["model"], j["status"]) for j in page["jobs"]} == {("echo", "succeeded")}
        seen += page["jobs"]
        if set(mine) <= {j["id"] for j in seen}:
            break
        assert page["next_cursor"], "ran out of pages before seeing every job of the batch"
        params["cursor"] = page["next_cursor"]
    assert len({j["id"] for j in seen}) == len(seen), "a job appeared on two pages"
    stamps = [j["created_at"] for j in seen]
    assert stamps == sorted(stamps, reverse=True)
    assert not [j for j in api.get("/v1/jobs", params={"model": "echo", "status": "queued"}).json()["jobs"]
                if j["id"] in mine]
    first_created = min(j["created_at"] for j in seen if j["id"] in mine)
    older = api.get("/v1/jobs", params={"model": "echo", "before": first_created, "limit": 200}).json()["jobs"]
    assert not {j["id"] for j in older} & set(mine)


def test_list_rejects_bad_filters(api: TestClient) -> None:
    response = api.get("/v1/jobs", params={"status": "done", "limit": 0, "cursor": "nonsense"})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"status", "limit"}
    response = api.get("/v1/jobs", params={"cursor": "nonsense"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "cursor"


def test_cancel(worker: WorkerProcess, api: TestClient, client: Client) -> None:
    job = api.post("/v1/jobs", json={"text": unique_text("cancel-me"), "model": "slow"}).json()
    response = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    time.sleep(1.5)  # the slow model's batch (1 s) has ended: a result computed meanwhile is discarded
    view = client.get(job["id"])
    assert (view.status, view.output) == ("cancelled", None)
    assert api.post(f"/v1/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_unknown_job_is_404(api: TestClient) -> None:
    assert api.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert api.get("/v1/jobs/not-a-uuid").status_code == 404


def test_health_and_readiness(api: TestClient) -> None:
    api.headers.pop("Authorization")  # probes need no key
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_not_ready_when_redis_or_database_is_down(backend: Backend, tmp_path: Any) -> None:
    no_redis = Client(database_url=backend.database_url, broker_url="redis://127.0.0.1:1/0")
    no_table = Client(database_url=f"sqlite:///{tmp_path / 'empty.db'}", broker_url=backend.broker_url)
    for broken, failed in [(no_redis, "broker"), (no_table, "database")]:
        with broken, TestClient(create_app(broken, GatewaySettings(keys=[KEY]))) as http:
            response = http.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"][failed].startswith("error")
            assert http.get("/healthz").status_code == 200


def test_refuses_to_start_without_keys(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTQ_API_KEYS", raising=False)
    monkeypatch.delenv("TEXTQ_API_INSECURE_DEV", raising=False)
    with pytest.raises(GatewayConfigError, match="TEXTQ_API_KEYS"):
        create_app(client)
    monkeypatch.setenv("TEXTQ_API_INSECURE_DEV", "1")
    with TestClient(create_app(client)) as http:
        assert http.get("/v1/jobs", params={"limit": 1}).status_code == 200


def test_keys_and_limits_come_from_the_environment(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTQ_API_KEYS", " k1 , k2 ")
    monkeypatch.setenv("TEXTQ_API_MAX_BODY_BYTES", "100")
    with TestClient(create_app(client)) as http:
        assert http.get("/v1/jobs", params={"limit": 1}, headers={"X-API-Key": "k2"}).status_code == 200
        assert http.get("/v1/jobs", params={"limit": 1}, headers={"X-API-Key": "k3"}).status_code == 401
        assert http.post("/v1/jobs", json={"text": "x" * 200}, headers={"X-API-Key": "k1"}).status_code == 413


def test_openapi_docs(api: TestClient) -> None:
    assert api.get("/docs").status_code == 200
    schema = api.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(schema["paths"])
    assert {"ClassifyRequest", "SummarizeRequest", "JobRequest", "JobView"} <= set(schema["components"]["schemas"])


def test_metrics_count_requests_by_route_template(api: TestClient) -> None:
    api.get("/v1/jobs/00000000-0000-0000-0000-000000000000")
    api.get("/healthz")
    text = api.get("/metrics").text
    assert 'textq_gateway_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in text
    assert 'textq_gateway_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'textq_gateway_request_seconds_count{method="GET",route="/v1/jobs/{job_id}"} 1.0' in text
    assert "00000000-0000" not in text  # ids never become label values
