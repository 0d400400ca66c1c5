"""Idempotency keys: the same key and request return the same job; the same key for a different
request is refused (IdempotencyConflictError, HTTP 409); batch keys never meet single keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.engine import session_factory
from db.models import Job
from producer import Client, IdempotencyConflictError, InvalidJobError
from producer.gateway import GatewaySettings, create_app
from tests.conftest import Backend
from tests.helpers import unique_text

KEY = "idem-key-" + uuid.uuid4().hex


def _count_rows(backend: Backend) -> int:
    with session_factory(backend.database_url)() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _key() -> str:
    return f"order-{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client, GatewaySettings(keys=[KEY])), headers={"X-API-Key": KEY}) as http:
        yield http


# -- Client ------------------------------------------------------------------------------------------
def test_same_key_same_request_is_the_same_job_whatever_the_timeout(client: Client, backend: Backend) -> None:
    key, text = _key(), unique_text()
    first = client.classify(text, model="echo", idempotency_key=key, timeout=60)
    rows = _count_rows(backend)
    again = client.classify(text, model="echo", idempotency_key=key, timeout=600)
    assert again.id == first.id
    assert _count_rows(backend) == rows


@pytest.mark.parametrize(("change", "differs"), [
    ({"task": "summarize", "model": None}, "model, task, input differ"),
    ({"text": "another text"}, "input differs"),
    ({"labels": ["a", "b"], "model": "zero-shot"}, "model, input differ"),
    ({"priority": 1}, "priority differs"),
])
def test_same_key_different_request_is_refused(client: Client, backend: Backend, change: dict[str, Any], differs: str) -> None:
    key = _key()
    original = {"text": "the same text", "model": "echo", "idempotency_key": key}
    first = client.submit(original)
    rows = _count_rows(backend)
    with pytest.raises(IdempotencyConflictError, match=differs) as caught:
        client.submit({**original, **change})
    assert caught.value.key == key and key in str(caught.value)
    assert _count_rows(backend) == rows
    assert client.submit(original).id == first.id  # the key still means the first request


def test_a_conflict_in_a_batch_writes_none_of_it(client: Client, backend: Backend) -> None:
    taken, fresh = _key(), _key()
    client.submit({"text": "first", "model": "echo", "idempotency_key": taken})
    rows = _count_rows(backend)
    with pytest.raises(IdempotencyConflictError, match=r"requests\[1\]"):
        client.submit_many([{"text": "new", "model": "echo", "idempotency_key": fresh},
                            {"text": "changed", "model": "echo", "idempotency_key": taken}])
    assert _count_rows(backend) == rows
    # The batch was rolled back: its fresh key is still free for any request.
    assert client.submit({"text": "something else", "model": "echo", "idempotency_key": fresh}).status == "queued"


def test_batch_key_returns_the_same_jobs_and_refuses_a_changed_batch(client: Client) -> None:
    key = _key()
    batch = [{"text": unique_text(), "model": "echo"} for _ in range(3)]
    ids = [v.id for v in client.submit_many(batch, idempotency_key=key)]
    assert len(set(ids)) == 3
    assert [v.id for v in client.submit_many(batch, idempotency_key=key)] == ids
    with pytest.raises(IdempotencyConflictError, match=r"job 2 of the batch"):
        client.submit_many([*batch[:2], {"text": "changed", "model": "echo"}], idempotency_key=key)


def test_batch_keys_and_single_keys_never_collide(client: Client) -> None:
    key = _key()
    batch = client.submit_many([{"text": unique_text(), "model": "echo"} for _ in range(2)], idempotency_key=key)
    # Before, a batch keyed K stored K:0, K:1: a single job keyed "K:0" got the batch's first job back.
    singles = [client.classify(unique_text(), model="echo", idempotency_key=k) for k in (key, f"{key}:0", f"{key}:1")]
    assert len({v.id for v in [*batch, *singles]}) == 5


@pytest.mark.parametrize(("call", "field", "rule"), [
    (lambda c: c.classify("x", model="echo", idempotency_key="a\x1fb"), "idempotency_key", "control character U+001F"),
    (lambda c: c.classify("x", model="echo", idempotency_key="tab\there"), "idempotency_key", "control character U+0009"),
    (lambda c: c.submit_many([{"text": "x"}], idempotency_key=""), "idempotency_key", "at least 1 character"),
    (lambda c: c.submit_many([{"text": "x"}] * 11, idempotency_key="k" * 253), "idempotency_key", "at most 252"),
    (lambda c: c.submit_many([{"text": "x", "idempotency_key": "own"}], idempotency_key="batch"),
     "requests[0].idempotency_key", "not both"),
])
def test_invalid_keys_are_refused_naming_the_rule(client: Client, backend: Backend, call: Any, field: str, rule: str) -> None:
    rows = _count_rows(backend)
    with pytest.raises(InvalidJobError) as caught:
        call(client)
    assert any(e.field == field and rule in e.message for e in caught.value.errors), caught.value.errors
    assert _count_rows(backend) == rows


# -- HTTP ---------------------------------------------------------------------------------------------
def test_http_same_key_different_request_is_409(api: TestClient, backend: Backend) -> None:
    key = {"Idempotency-Key": _key()}
    classify = {"task": "classify", "text": "I loved it", "model": "echo"}
    first = api.post("/v1/jobs", json=classify, headers=key)
    assert first.status_code == 202
    again = api.post("/v1/jobs", json={**classify, "timeout": 30}, headers=key)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    rows = _count_rows(backend)
    response = api.post("/v1/jobs", json={"task": "summarize", "text": "I loved it"}, headers=key)
    assert response.status_code == 409, response.text
    body = response.json()
    assert "was used before for a different request" in body["detail"]
    assert body["errors"][0]["field"] == "Idempotency-Key" and "send a new key" in body["errors"][0]["message"]
    assert _count_rows(backend) == rows


def test_http_batch_and_single_keys_never_collide(api: TestClient) -> None:
    key = _key()
    batch = {"jobs": [{"text": unique_text(), "model": "echo"} for _ in range(2)]}
    ids = [j["id"] for j in api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": key}).json()]
    assert [j["id"] for j in api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": key}).json()] == ids
    single = api.post("/v1/jobs", json={"text": unique_text(), "model": "echo"}, headers={"Idempotency-Key": f"{key}:0"})
    assert single.status_code == 202, single.text
    assert single.json()["id"] not in ids
    changed = {"jobs": [batch["jobs"][0], {"text": "changed", "model": "echo"}]}
    response = api.post("/v1/jobs", json=changed, headers={"Idempotency-Key": key})
    assert response.status_code == 409 and "job 1 of the batch" in response.text


def test_http_key_in_header_and_body_must_agree(api: TestClient) -> None:
    body = {"text": unique_text(), "model": "echo", "idempotency_key": "in-the-body"}
    response = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "in-the-header"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "idempotency_key"
    response = api.post("/v1/jobs", json={"jobs": [body]}, headers={"Idempotency-Key": "in-the-header"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "jobs[0].idempotency_key"
