"""Tenants: each API key sees, waits for and cancels only its tenant's jobs; an admin key sees all."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from producer import Client, JobNotFoundError
from producer.gateway import GatewayConfigError, GatewaySettings, create_app
from producer.tenants import DEFAULT_SCOPES, ApiKey, Scope, load_api_keys
from tests.conftest import Backend, new_backend

RUN = uuid.uuid4().hex[:8]
ACME, GLOBEX, OPS = f"acme-{RUN}", f"globex-{RUN}", f"ops-{RUN}"
KEYS = {
    "acme": f"acme-key-{RUN}",
    "globex": f"globex-key-{RUN}",
    "reader": f"acme-reader-{RUN}",
    "admin": f"admin-key-{RUN}",
}
ENTRIES = [f"{KEYS['acme']}:{ACME}", f"{KEYS['globex']}:{GLOBEX}", f"{KEYS['reader']}:{ACME}:read",
           f"{KEYS['admin']}:{OPS}:admin"]


@pytest.fixture(scope="module")
def quiet_backend(backend: Backend) -> Iterator[Backend]:
    """A backend of this module's own that no worker serves: submitted jobs stay queued."""
    with new_backend(backend.name, "tenants") as b:
        yield b


@pytest.fixture()
def client(quiet_backend: Backend) -> Iterator[Client]:
    with Client(database_url=quiet_backend.database_url, broker_url=quiet_backend.broker_url) as c:
        yield c


@pytest.fixture(scope="module")
def offline_client() -> Iterator[Client]:
    """A Client that never connects: for configuration errors raised before any request."""
    with Client(database_url="sqlite://", broker_url="redis://127.0.0.1:1/0") as c:
        yield c


@pytest.fixture()
def api(client: Client) -> Iterator[TestClient]:
    with TestClient(create_app(client, GatewaySettings(keys=ENTRIES))) as http:
        yield http


def _as(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def _submit(api: TestClient, who: str, **extra: str) -> str:
    response = api.post("/v1/jobs", json={"text": f"from {who}", "model": "echo", **extra}, headers=_as(who))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _listed(api: TestClient, who: str) -> set[str]:
    response = api.get("/v1/jobs", params={"limit": 200}, headers=_as(who))
    assert response.status_code == 200, response.text
    return {j["id"] for j in response.json()["jobs"]}


# -- who sees what ----------------------------------------------------------------------------
def test_another_tenants_job_is_a_404_for_get_wait_and_cancel(api: TestClient, client: Client) -> None:
    acme_job = _submit(api, "acme")
    never = str(uuid.uuid4())
    for path, method, params in [(f"/v1/jobs/{acme_job}", "GET", {}), (f"/v1/jobs/{acme_job}", "GET", {"wait": 0.2}),
                                 (f"/v1/jobs/{acme_job}/cancel", "POST", {})]:
        guessed = api.request(method, path, params=params, headers=_as("globex"))
        unknown = api.request(method, path.replace(acme_job, never), params=params, headers=_as("globex"))
        assert guessed.status_code == unknown.status_code == 404, (path, guessed.text)
        # The same answer as for an id that does not exist: nothing tells a guessed id from a wrong one.
        assert guessed.json()["detail"].replace(acme_job, never) == unknown.json()["detail"]
    assert client.get(acme_job).status == "queued"  # globex's cancel did nothing
    assert api.get(f"/v1/jobs/{acme_job}", headers=_as("acme")).json()["status"] == "queued"
    assert api.get(f"/v1/jobs/{acme_job}", headers=_as("reader")).status_code == 200  # same tenant, other key


def test_lists_show_only_the_tenants_jobs_and_an_admin_sees_all(api: TestClient) -> None:
    acme_jobs = {_submit(api, "acme") for _ in range(3)}
    globex_jobs = {_submit(api, "globex") for _ in range(2)}
    assert acme_jobs <= _listed(api, "acme") and not globex_jobs & _listed(api, "acme")
    assert globex_jobs <= _listed(api, "globex") and not acme_jobs & _listed(api, "globex")
    assert acme_jobs | globex_jobs <= _listed(api, "admin")
    filtered = api.get("/v1/jobs", params={"model": "echo", "status": "queued", "limit": 200}, headers=_as("globex"))
    assert {j["id"] for j in filtered.json()["jobs"]} >= globex_jobs
    assert not {j["id"] for j in filtered.json()["jobs"]} & acme_jobs


def test_an_admin_reads_and_cancels_any_tenants_job(api: TestClient) -> None:
    globex_job = _submit(api, "globex")
    assert api.get(f"/v1/jobs/{globex_job}", headers=_as("admin")).status_code == 200
    cancelled = api.post(f"/v1/jobs/{globex_job}/cancel", headers=_as("admin"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    admin_job = _submit(api, "admin")  # an admin's own jobs belong to its tenant
    assert api.get(f"/v1/jobs/{admin_job}", headers=_as("acme")).status_code == 404


def test_scopes_limit_what_a_key_may_do(api: TestClient) -> None:
    acme_job = _submit(api, "acme")
    refused = api.post("/v1/jobs", json={"text": "no", "model": "echo"}, headers=_as("reader"))
    assert refused.status_code == 403 and "'submit' scope" in refused.json()["detail"]
    assert api.post(f"/v1/jobs/{acme_job}/cancel", headers=_as("reader")).status_code == 403
    assert api.get(f"/v1/jobs/{acme_job}", headers=_as("acme")).json()["status"] == "queued"


def test_idempotency_keys_are_per_tenant(api: TestClient) -> None:
    key = f"order-{uuid.uuid4()}"
    acme_job = _submit(api, "acme", idempotency_key=key)
    globex_job = _submit(api, "globex", idempotency_key=key)
    assert acme_job != globex_job  # globex neither gets acme's job nor learns that the key was used
    assert _submit(api, "globex", idempotency_key=key) == globex_job


def test_the_python_client_sees_every_tenant_unless_scoped(api: TestClient, client: Client, quiet_backend: Backend) -> None:
    acme_job = _submit(api, "acme")
    assert client.get(acme_job).id == uuid.UUID(acme_job)  # it holds the database credentials anyway
    globex = client.for_tenant(GLOBEX)
    with pytest.raises(JobNotFoundError):
        globex.get(acme_job)
    with pytest.raises(JobNotFoundError):
        globex.wait(acme_job, timeout=0.1)
    assert globex.cancel(globex.classify("mine", model="echo").id).status == "cancelled"
    with pytest.raises(JobNotFoundError):
        globex.cancel(acme_job)
    assert client.get(acme_job).status == "queued"
    assert globex.count_by_status().get("queued", 0) < client.count_by_status()["queued"]
    globex.close()  # a scoped Client shares its parent's connections: closing it closes nothing
    assert client.get(acme_job).status == "queued"
    with Client(database_url=quiet_backend.database_url, broker_url=quiet_backend.broker_url, tenant=GLOBEX) as own:
        seen = {j.id for j in own.list_jobs(limit=200).jobs}
        assert seen and uuid.UUID(acme_job) not in seen  # globex's "mine" job, not acme's
        with pytest.raises(JobNotFoundError):
            own.get(acme_job)
    with pytest.raises(ValueError, match="tenant must be 1-64 letters"):
        client.for_tenant("no spaces")


def test_bare_keys_belong_to_the_default_tenant(client: Client) -> None:
    with TestClient(create_app(client, GatewaySettings(keys=["plain-key"]))) as http:
        created = http.post("/v1/jobs", json={"text": "plain", "model": "echo"}, headers={"X-API-Key": "plain-key"})
        assert created.status_code == 202
    assert client.for_tenant("default").get(created.json()["id"]).status == "queued"


# -- docs and metrics --------------------------------------------------------------------------
def test_docs_and_metrics_can_be_closed(client: Client) -> None:
    closed = GatewaySettings(keys=ENTRIES, docs="off", metrics="off")
    with TestClient(create_app(client, closed)) as http:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert http.get(path, headers=_as("admin")).status_code == 404, path
    admin_only = GatewaySettings(keys=ENTRIES, docs="admin", metrics="admin")
    with TestClient(create_app(client, admin_only)) as http:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers=_as("acme")).status_code == 403, path
            assert http.get(path, headers=_as("admin")).status_code == 200, path
        assert "/v1/jobs" in http.get("/openapi.json", headers=_as("admin")).json()["paths"]
        assert http.get("/healthz").status_code == 200  # probes stay open


def test_access_settings_come_from_the_environment(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTQ_API_KEYS", ",".join(ENTRIES))
    monkeypatch.setenv("TEXTQ_API_METRICS", "admin")
    monkeypatch.setenv("TEXTQ_API_DOCS", "off")
    with TestClient(create_app(client)) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/openapi.json", headers=_as("admin")).status_code == 404


# -- configuration -----------------------------------------------------------------------------
def test_key_entries_name_tenant_and_scopes() -> None:
    keys = load_api_keys(["k1", "k2:acme", "k3:acme:read+cancel", "k4:ops:admin"])
    assert keys == [ApiKey("k1", "default", DEFAULT_SCOPES), ApiKey("k2", "acme", DEFAULT_SCOPES),
                    ApiKey("k3", "acme", frozenset({Scope.READ, Scope.CANCEL})), ApiKey("k4", "ops", frozenset({Scope.ADMIN}))]
    assert keys[3].sees_all and keys[3].allows(Scope.SUBMIT) and not keys[2].allows(Scope.SUBMIT)
    assert "k3" not in repr(keys[2])


def test_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"key": "f1", "tenant": "acme"}, {"key": "f:2", "tenant": "ops", "scopes": ["admin"]}]))
    keys = load_api_keys(["e1"], path)
    assert [(k.key, k.tenant) for k in keys] == [("e1", "default"), ("f1", "acme"), ("f:2", "ops")]


SECRET = "s3cret-value"


@pytest.mark.parametrize(
    ("entries", "document", "message"),
    [
        ([f"{SECRET}:bad tenant"], None, "TEXTQ_API_KEYS entry 1: tenant must be 1-64 letters"),
        (["ok", f"{SECRET}:acme:read+write"], None, "TEXTQ_API_KEYS entry 2: scopes must be a non-empty list of submit"),
        ([f"{SECRET}:{'t' * 65}"], None, "TEXTQ_API_KEYS_FILE"),  # the hint for keys containing ':'
        ([SECRET, f"{SECRET}:acme"], None, "API key #2 (counting TEXTQ_API_KEYS, then the keys file) is configured twice"),
        ([], "{not json", "is not valid JSON"),
        ([], '{"key": "x"}', "must be a JSON list"),
        ([], json.dumps([{"key": SECRET, "tenant": "a"}, {"tenant": "b"}]), "[1].key: is required"),
        ([], json.dumps([{"key": SECRET, "tenant": "a", "scope": ["read"]}]), "[0]: unknown field 'scope'"),
        ([], json.dumps([{"key": SECRET, "scopes": "read"}]), "[0].scopes: must be a list of strings"),
        ([], json.dumps([{"key": SECRET, "scopes": []}]), "[0]: scopes must not be empty"),
        ([], json.dumps([{"key": f" {SECRET}"}]), "[0]: the key must be non-empty, without surrounding spaces"),
        ([], json.dumps([SECRET]), "[0]: must be an object"),
    ],
)
def test_bad_key_configuration_is_a_clear_error_that_never_shows_a_key(
    offline_client: Client, tmp_path: Path, entries: list[str], document: str | None, message: str
) -> None:
    keys_file = None
    if document is not None:
        keys_file = tmp_path / "keys.json"
        keys_file.write_text(document)
    with pytest.raises(GatewayConfigError) as raised:
        create_app(offline_client, GatewaySettings(keys=entries, keys_file=keys_file))
    assert message in str(raised.value)
    assert SECRET not in str(raised.value)


def test_a_missing_keys_file_is_a_clear_error(offline_client: Client, tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match=r"keys.json: cannot be read \(No such file or directory\)"):
        create_app(offline_client, GatewaySettings(keys_file=tmp_path / "keys.json"))
