"""Keyset paging of jobs on (created_at, id), through the Client and the gateway, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from db import listing, store
from db.engine import session_factory
from db.models import Job
from producer import Client, InvalidJobError
from producer.errors import ListTimeoutError
from producer.gateway import GatewaySettings, create_app
from producer.paging import decode_cursor, encode_cursor
from tests.conftest import Backend

KEY = "paging-key-" + uuid.uuid4().hex
BATCH_AT = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _insert(backend: Backend, tenant: str, created_at: list[datetime], model: str = "echo") -> list[uuid.UUID]:
    jobs = [store.NewJob(model=model, task="classify", input={"text": "x"}, tenant=tenant, created_at=t) for t in created_at]
    with session_factory(backend.database_url).begin() as session:
        return store.create_jobs(session, jobs=jobs)


def _all_pages(client: Client, **filters: object) -> list[list[uuid.UUID]]:
    pages, cursor = [], None
    while True:
        page = client.list_jobs(cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([j.id for j in page.jobs])
        if page.next_cursor is None:
            return pages
        assert len(page.jobs) == filters.get("limit", 50)
        cursor = page.next_cursor


@pytest.fixture()
def tenant_client(client: Client) -> Client:
    """The shared backend's Client seeing only a tenant of this test's own (so other tests' jobs do not show)."""
    return client.for_tenant(f"paging-{uuid.uuid4().hex[:8]}")


def test_a_batch_sharing_one_created_at_is_paged_each_job_once(backend: Backend, tenant_client: Client) -> None:
    newer = _insert(backend, tenant_client.tenant, [BATCH_AT + timedelta(seconds=1)] * 2)
    batch = _insert(backend, tenant_client.tenant, [BATCH_AT] * 23)
    older = _insert(backend, tenant_client.tenant, [BATCH_AT - timedelta(microseconds=1)] * 3)
    for limit in (1, 4, 23, 50):
        pages = _all_pages(tenant_client, limit=limit)
        seen = [job_id for page in pages for job_id in page]
        assert len(seen) == len(set(seen)) == 28, f"limit {limit}: a job shown twice or missed"
        # Newest first, a batch's jobs by id (descending): the order the cursor continues from.
        assert seen == sorted(newer, reverse=True) + sorted(batch, reverse=True) + sorted(older, reverse=True)


def test_filters_and_before_combine_with_the_cursor(backend: Backend, tenant_client: Client) -> None:
    echo = _insert(backend, tenant_client.tenant, [BATCH_AT] * 7)
    _insert(backend, tenant_client.tenant, [BATCH_AT] * 5, model="slow")
    pages = _all_pages(tenant_client, model="echo", status="queued", limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(j for p in pages for j in p) == sorted(echo)
    assert tenant_client.list_jobs(model="echo", status="succeeded").jobs == []
    assert tenant_client.list_jobs(before=BATCH_AT).jobs == []
    assert len(tenant_client.list_jobs(before=BATCH_AT + timedelta(microseconds=1), limit=200).jobs) == 12


def test_a_forged_cursor_starts_a_page_elsewhere_and_reads_one_page(backend: Backend, tenant_client: Client) -> None:
    ids = sorted(_insert(backend, tenant_client.tenant, [BATCH_AT] * 6), reverse=True)
    # Any well-formed position is just a place to start: in the middle of the batch, far future, the epoch.
    middle = encode_cursor(listing.PagePosition(BATCH_AT, ids[2]))
    assert [j.id for j in tenant_client.list_jobs(cursor=middle, limit=2).jobs] == ids[3:5]
    future = encode_cursor(listing.PagePosition(datetime(9999, 12, 31, tzinfo=UTC), uuid.UUID(int=0)))
    assert len(tenant_client.list_jobs(cursor=future, limit=4).jobs) == 4
    epoch = encode_cursor(listing.PagePosition(datetime(1970, 1, 1, tzinfo=UTC), uuid.UUID(int=2**128 - 1)))
    assert tenant_client.list_jobs(cursor=epoch).jobs == []


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


MALFORMED_CURSORS = [
    "", "nonsense", "é", "%00", "\x00", "x" * 10_000,
    _b64(f"{datetime.now(UTC).isoformat()}|999999999"),  # the old skip-count cursor
    _b64(f"1.{'9' * 18}.{uuid.uuid4().hex}"), _b64(f"1.{'9' * 19}.{uuid.uuid4().hex}"),  # years past 9999
    _b64(f"1.-5.{uuid.uuid4().hex}"), _b64("1.5.nothex"), _b64(f"2.5.{uuid.uuid4().hex}"),
    _b64(f"1.5.{uuid.uuid4().hex}") + "AAAA",
]


@pytest.mark.parametrize("cursor", MALFORMED_CURSORS)
def test_malformed_cursor_is_a_clear_error_naming_the_field(cursor: str) -> None:
    with pytest.raises(InvalidJobError) as raised:
        decode_cursor(cursor)
    assert [e.field for e in raised.value.errors] == ["cursor"]
    assert "next_cursor" in raised.value.errors[0].message


def test_cursor_round_trip() -> None:
    position = listing.PagePosition(BATCH_AT, uuid.uuid4())
    assert decode_cursor(encode_cursor(position)) == position


def test_list_arguments_are_checked_by_the_client(tenant_client: Client) -> None:
    for kwargs, field in [({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"status": "done"}, "status"),
                          ({"model": "\x00"}, "model"), ({"model": "m" * 129}, "model"),
                          ({"before": datetime(2024, 1, 1)}, "before"), ({"cursor": "nonsense"}, "cursor")]:
        with pytest.raises(InvalidJobError) as raised:
            tenant_client.list_jobs(**kwargs)  # type: ignore[arg-type]
        assert raised.value.errors[0].field == field, kwargs


@pytest.fixture()
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client, GatewaySettings(keys=[f"{KEY}:ops:admin"])), headers={"X-API-Key": KEY}) as http:
        yield http


@pytest.mark.parametrize("cursor", MALFORMED_CURSORS)
def test_gateway_answers_422_to_a_malformed_cursor(api: TestClient, cursor: str) -> None:
    response = api.get("/v1/jobs", params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


@pytest.mark.parametrize("params", [{"before": "2024-01-01T00:00:00"}, {"model": "\x00"}, {"limit": "1e309"}])
def test_gateway_answers_422_to_bad_filters(api: TestClient, params: dict[str, str]) -> None:
    response = api.get("/v1/jobs", params=params)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == list(params)


def test_gateway_pages_through_a_batch(backend: Backend, api: TestClient) -> None:
    tenant = f"paging-{uuid.uuid4().hex[:8]}"
    ids = {str(i) for i in _insert(backend, tenant, [BATCH_AT + timedelta(days=1)] * 9)}
    seen: list[str] = []
    params: dict[str, object] = {"limit": 4, "before": (BATCH_AT + timedelta(days=1, microseconds=1)).isoformat()}
    while len(seen) < len(ids):  # an admin key: every tenant's jobs, these the newest
        page = api.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        params["cursor"] = page["next_cursor"]
    assert seen[:9] == sorted(seen[:9], reverse=True)
    assert set(seen[:9]) == ids and len(seen) == len(set(seen))


def test_a_list_past_its_time_limit_is_an_error_not_a_long_read(backend: Backend, tenant_client: Client) -> None:
    _insert(backend, tenant_client.tenant, [BATCH_AT - timedelta(microseconds=i) for i in range(40_000)])
    try:
        assert len(tenant_client.list_jobs(limit=200).jobs) == 200  # an indexed page is fast
        tenant_client.list_time_limit_s = 0.001
        with pytest.raises(ListTimeoutError, match="narrow it"):
            tenant_client.list_jobs(model="slow")  # no job matches: the filter would scan all 40,000 rows
        tenant_client.list_time_limit_s = 60
        assert tenant_client.list_jobs(model="slow").jobs == []
        assert len(tenant_client.list_jobs(limit=5).jobs) == 5  # the connection is usable afterwards
    finally:
        with session_factory(backend.database_url).begin() as session:
            session.execute(delete(Job).where(Job.tenant == tenant_client.tenant))
