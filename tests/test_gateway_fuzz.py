"""Hostile input to every gateway route: a 4xx naming the field, or a 2xx; never a 5xx while the
database is up, and a 503 (not a 500) when it is down. Also the content types a body may come in."""

from __future__ import annotations

import base64
import json
import re
import socket
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db.engine import session_factory
from db.models import Job
from producer import Client
from producer.gateway import GatewaySettings, create_app
from tests.conftest import Backend
from tests.helpers import unique_text

KEY = "fuzz-key-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {KEY}"}
README = Path(__file__).resolve().parents[1] / "README.md"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture()
def http(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client, GatewaySettings(keys=[KEY])), headers=AUTH, raise_server_exceptions=False) as api:
        yield api


def _count_rows(backend: Backend) -> int:
    with session_factory(backend.database_url)() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _assert_answered(response: Any) -> None:
    """A 2xx, or a 4xx whose body says what is wrong (each bad field and its rule where there are fields)."""
    assert response.status_code < 500, (response.request.method, str(response.request.url), response.text)
    if response.status_code < 400:
        return
    body = response.json()
    assert body["detail"], body
    if response.status_code in (409, 415, 422):
        assert body["errors"] and all(e["field"] and e["message"] for e in body["errors"]), body


# -- strategies --------------------------------------------------------------------------------------
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)
_numbers = st.integers() | st.floats() | st.sampled_from([10**400, 1e308, -0.0, 0, 1, 9, 10])
job_requests = st.fixed_dictionaries({}, optional={
    "task": st.sampled_from(["classify", "summarize"]) | json_values,
    "text": st.text(max_size=50) | json_values,
    "labels": st.lists(st.text(max_size=10), max_size=4) | json_values,
    "model": st.sampled_from(["echo", "null", "sentiment", "zero-shot", "summarize"]) | st.text(max_size=20) | json_values,
    "priority": _numbers | json_values,
    "timeout": _numbers | st.sampled_from([float("inf"), float("nan"), 1e309]) | json_values,
    "max_sentences": _numbers | json_values,
    "idempotency_key": st.text(max_size=30) | json_values,
}) | st.dictionaries(st.text(max_size=10), json_values, max_size=4)
bodies = (job_requests | st.fixed_dictionaries({"jobs": st.lists(job_requests, max_size=3)}) | json_values).map(
    lambda body: json.dumps(body).encode())  # NaN and Infinity are written as such: not JSON, but sent
raw_bodies = st.binary(max_size=60) | st.sampled_from([b"", b"{", b"[" * 100_000, b'{"text": 1e309}', b"\xff\xfe{}",
                                                       b'{"text": "hi", "timeout": Infinity}', b"NaN"])
content_types = st.sampled_from([None, "application/json", "application/json; charset=utf-8", "application/merge-patch+json",
                                 "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", ""])
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
query_text = st.text(max_size=40)  # any code point, NUL included: sent percent-encoded
datetimes = st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
cursors = (st.tuples(datetimes | query_text, st.integers() | query_text).map(lambda c: f"{c[0]}|{c[1]}") | query_text).map(
    lambda c: base64.urlsafe_b64encode(c.encode()).decode()) | query_text
list_queries = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(["queued", "succeeded", "done", ""]) | query_text,
    "model": st.sampled_from(["echo", "%00", "\x00"]) | query_text,
    "limit": st.integers().map(str) | query_text,
    "before": datetimes | query_text,
    "cursor": cursors,
}) | st.dictionaries(query_text, query_text, max_size=3)
job_ids = st.uuids().map(str) | query_text | st.sampled_from(["%00", "..", "not-a-uuid", "0" * 32])
wait_values = (st.none() | st.floats().map(str) | st.integers().map(str) | query_text
               | st.sampled_from(["inf", "nan", "-0", "1e309"]))


# -- no 5xx ------------------------------------------------------------------------------------------
def test_submit_never_answers_5xx(http: TestClient) -> None:
    @FUZZ
    @given(body=bodies | raw_bodies, content_type=content_types, key=st.none() | header_text)
    def submit(body: bytes, content_type: str | None, key: str | None) -> None:
        headers = {k: v for k, v in {"Content-Type": content_type, "Idempotency-Key": key}.items() if v is not None}
        _assert_answered(http.post("/v1/jobs", content=body, headers=headers))

    submit()


def test_list_never_answers_5xx(http: TestClient) -> None:
    @FUZZ
    @given(query=list_queries)
    def list_jobs(query: dict[str, str]) -> None:
        _assert_answered(http.get("/v1/jobs", params=query))

    list_jobs()


def test_get_wait_and_cancel_never_answer_5xx(http: TestClient) -> None:
    finished = http.post("/v1/jobs", json={"text": unique_text(), "model": "echo"}).json()["id"]
    assert http.post(f"/v1/jobs/{finished}/cancel").json()["status"] in ("cancelled", "succeeded")

    @FUZZ
    @given(job_id=job_ids | st.just(finished), wait=wait_values, cancel=st.booleans())
    def read(job_id: str, wait: str | None, cancel: bool) -> None:
        path = f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}"
        if cancel:
            _assert_answered(http.post(f"{path}/cancel"))
        else:  # only finished or unknown jobs: a valid wait answers at once
            _assert_answered(http.get(path, params={} if wait is None else {"wait": wait}))

    read()


@pytest.mark.parametrize(("body", "field", "rule"), [
    (b'{"text": "hi", "timeout": 1e309}', "body", "out of the range"),
    (b'{"text": "hi", "timeout": Infinity}', "body", "Infinity is not a JSON number"),
    (b'{"text": "hi", "timeout": NaN}', "body", "NaN is not a JSON number"),
    (b'{"text": "hi", "timeout": 1e300}', "timeout", "less than or equal to"),
    (b'{"text": "hi", "idempotency_key": "a\\u0000b"}', "idempotency_key", "control character U+0000"),
    (b"[" * 100_000, "body", "nested too deeply"),
    (b"", "body", "is empty"),
    (b"\xff\xfe{}", "body", "not valid JSON"),
])
def test_bodies_that_were_500_are_422_naming_the_field(
    http: TestClient, backend: Backend, body: bytes, field: str, rule: str
) -> None:
    before = _count_rows(backend)
    response = http.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(e["field"] == field and rule in e["message"] for e in response.json()["errors"]), response.json()
    assert _count_rows(backend) == before


@pytest.mark.parametrize(("query", "field"), [
    ({"before": "2024-01-01T00:00:00"}, "before"),
    ({"before": "0001-01-01T00:00:00+14:00"}, "before"),
    ({"model": "\x00"}, "model"),
    ({"cursor": base64.urlsafe_b64encode(b"2024-01-01T00:00:00|1").decode()}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"9999-12-31T23:59:59.999999+00:00|1").decode()}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|-5").decode()}, "cursor"),
    ({"cursor": "%%%"}, "cursor"),
])
def test_queries_that_were_500_are_422_naming_the_field(http: TestClient, query: dict[str, str], field: str) -> None:
    response = http.get("/v1/jobs", params=query)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


# -- database down ------------------------------------------------------------------------------------
def test_database_down_is_503_on_every_route(backend: Backend) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"postgresql+psycopg://postgres@127.0.0.1:{port}/textq"
    job = str(uuid.uuid4())
    with Client(database_url=down, broker_url=backend.broker_url) as client, \
            TestClient(create_app(client, GatewaySettings(keys=[KEY])), headers=AUTH, raise_server_exceptions=False) as api:
        for method, path, params in [("POST", "/v1/jobs", None), ("GET", "/v1/jobs", None), ("GET", f"/v1/jobs/{job}", None),
                                     ("GET", f"/v1/jobs/{job}", {"wait": 1}), ("POST", f"/v1/jobs/{job}/cancel", None)]:
            response = api.request(method, path, params=params, json={"text": "hello", "model": "echo"})
            assert response.status_code == 503, (method, path, response.text)
            assert "the database is unavailable" in response.json()["detail"]
            assert str(port) not in response.text  # no host or port in the body
            assert response.headers["retry-after"]


# -- content types --------------------------------------------------------------------------------------
def _readme_curl_bodies() -> list[bytes]:
    section = README.read_text().split("## HTTP gateway", 1)[1].split("\n## ", 1)[0]
    bodies = [b.encode() for b in re.findall(r"-d '([^']*)'", section)]
    assert bodies, "the README's gateway section has no curl -d example"
    return bodies


def test_readme_curl_examples_are_accepted(http: TestClient) -> None:
    """`curl -d BODY` sends BODY as is, with a form content type: the README's examples must work."""
    for body in _readme_curl_bodies():
        response = http.post("/v1/jobs", content=body, headers={
            "User-Agent": "curl/8.5.0", "Accept": "*/*", "Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 202, (body, response.text)


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "application/x-www-form-urlencoded", "application/vnd.textq+json"])
def test_json_is_read_from_these_content_types(http: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = http.post("/v1/jobs", content=json.dumps({"text": unique_text(), "model": "echo"}).encode(), headers=headers)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml"])
def test_other_content_types_are_415(http: TestClient, backend: Backend, content_type: str) -> None:
    before = _count_rows(backend)
    response = http.post("/v1/jobs", content=json.dumps({"text": unique_text(), "model": "echo"}).encode(),
                         headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "Content-Type" and "Content-Type: application/json" in error["message"]
    assert _count_rows(backend) == before
