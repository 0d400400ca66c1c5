"""Files, batches and webhook endpoints belong to tenants, as jobs do: another tenant's file or batch
is a 404 on every route (the same answer as an unknown id), lists show a tenant's own, an admin key
sees all, and an endpoint gets only its tenant's events. A real gateway (uvicorn) on each backend."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import select

from db.engine import session_factory
from db.models import Job
from producer import Client, JobNotFoundError
from producer.batch_errors import BatchNotFoundError
from producer.gateway import GatewaySettings, create_app
from producer.webhook_endpoints import deliveries
from producer.webhook_sender import WebhookSender
from producer.worker_process import WorkerProcess
from tests import test_webhooks
from tests.conftest import Backend, new_backend
from tests.helpers import unique_text, wait_until
from tests.live_gateway import serve
from tests.test_cli import textq
from tests.test_webhooks import Receiver

# The webhook tests' receiver and senders (with their settings), shared.
receiver, hook_env, senders = test_webhooks.receiver, test_webhooks.hook_env, test_webhooks.senders

RUN = uuid.uuid4().hex[:8]
ACME, GLOBEX, OPS = f"acme-{RUN}", f"globex-{RUN}", f"ops-{RUN}"
KEYS = {"acme": f"acme-key-{RUN}", "globex": f"globex-key-{RUN}", "reader": f"acme-reader-{RUN}",
        "admin": f"admin-key-{RUN}"}
ENTRIES = [f"{KEYS['acme']}:{ACME}", f"{KEYS['globex']}:{GLOBEX}", f"{KEYS['reader']}:{ACME}:read",
           f"{KEYS['admin']}:{OPS}:admin"]
FINAL = ("completed", "failed", "expired", "cancelled")
# What a cancel answers: the gateway's driver may already be writing the cancelled batch's files
# (cancelling -> finalizing -> cancelled, producer/batches.py) when the answer is read.
AFTER_CANCEL = ("cancelling", "finalizing", "cancelled")


@contextmanager
def gateway(client: Client) -> Iterator[httpx.Client]:
    """A live gateway over `client` with this module's keys, and an HTTP client for it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TEXTQ_BATCH_DRIVE_INTERVAL_S", "0.2")
        app = create_app(client, GatewaySettings(keys=ENTRIES))
    with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def quiet_client(backend: Backend) -> Iterator[Client]:
    """A Client on a backend of this module's own that no worker serves: batches stay in_progress."""
    with new_backend(backend.name, "batch-tenants") as b, \
            Client(database_url=b.database_url, broker_url=b.broker_url) as c:
        yield c


@pytest.fixture(scope="module")
def http(quiet_client: Client) -> Iterator[httpx.Client]:
    with gateway(quiet_client) as h:
        yield h


def _as(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def _lines(n: int = 3) -> list[dict[str, Any]]:
    return [{"custom_id": f"r-{i}", "method": "POST", "url": "/v1/jobs", "body": {"text": unique_text("t"), "model": "echo"}}
            for i in range(n)]


def _upload(http: httpx.Client, who: str, n: int = 3) -> str:
    content = b"".join(json.dumps(x).encode() + b"\n" for x in _lines(n))
    response = http.post("/v1/files", files={"file": ("r.jsonl", content)}, data={"purpose": "batch"}, headers=_as(who))
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


def _create(http: httpx.Client, who: str, file_id: str) -> str:
    response = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/jobs"}, headers=_as(who))
    assert response.status_code == 200, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def _batch(http: httpx.Client, who: str, batch_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/batches/{batch_id}", headers=_as(who))
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def _listed(http: httpx.Client, who: str) -> set[str]:
    response = http.get("/v1/batches", params={"limit": 100}, headers=_as(who))
    assert response.status_code == 200, response.text
    return {b["id"] for b in response.json()["data"]}


def _unknown_like(some_id: str) -> str:
    """An id of the same shape that names nothing."""
    return some_id[: -32] + uuid.uuid4().hex


def _assert_hidden(http: httpx.Client, who: str, method: str, path: str, hidden_id: str, **body: Any) -> None:
    """`who` gets the answer an unknown id gets: a 404, the same body but for the id."""
    never = _unknown_like(hidden_id)
    guessed = http.request(method, path, headers=_as(who), json=body or None)
    unknown = http.request(method, path.replace(hidden_id, never),
                           json={k: v.replace(hidden_id, never) for k, v in body.items()} or None, headers=_as(who))
    assert guessed.status_code == unknown.status_code == 404, (method, path, guessed.text)
    assert guessed.text.replace(hidden_id, never) == unknown.text


def _batch_tenants(client: Client, batch_id: str) -> set[str]:
    with session_factory(client.database_url)() as session:
        return set(session.scalars(select(Job.tenant).where(Job.batch_id == batch_id)).all())


# -- who sees what ------------------------------------------------------------------------------
def test_a_tenants_file_and_batch_are_a_404_for_another_tenant_on_every_route(http: httpx.Client,
                                                                              quiet_client: Client) -> None:
    file_id = _upload(http, "acme")
    batch_id = _create(http, "acme", file_id)
    wait_until(lambda: _batch(http, "acme", batch_id)["status"] == "in_progress", what="the batch to be loaded")
    for method, path in [("GET", f"/v1/files/{file_id}"), ("GET", f"/v1/files/{file_id}/content"),
                         ("DELETE", f"/v1/files/{file_id}")]:
        _assert_hidden(http, "globex", method, path, file_id)
    _assert_hidden(http, "globex", "POST", "/v1/batches", file_id, input_file_id=file_id, endpoint="/v1/jobs")
    for method, path in [("GET", f"/v1/batches/{batch_id}"), ("POST", f"/v1/batches/{batch_id}/cancel")]:
        _assert_hidden(http, "globex", method, path, batch_id)
    assert batch_id in _listed(http, "acme") and batch_id not in _listed(http, "globex")
    # globex's delete and cancel did nothing; the batch's jobs are acme's.
    assert http.get(f"/v1/files/{file_id}/content", headers=_as("acme")).content.count(b"\n") == 3
    assert _batch(http, "acme", batch_id)["status"] == "in_progress"
    assert _batch_tenants(quiet_client, batch_id) == {ACME}

    assert http.post(f"/v1/batches/{batch_id}/cancel", headers=_as("acme")).status_code == 200
    wait_until(lambda: _batch(http, "acme", batch_id)["status"] == "cancelled", what="the batch to be cancelled")
    results_id = _batch(http, "acme", batch_id)["error_file_id"]  # every line, each with its job
    for path in [f"/v1/files/{results_id}", f"/v1/files/{results_id}/content"]:
        _assert_hidden(http, "globex", "GET", path, results_id)
    results = [json.loads(x) for x in http.get(f"/v1/files/{results_id}/content", headers=_as("acme")).content.splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["r-0", "r-1", "r-2"]
    job_ids = [r["response"]["request_id"] for r in results]
    assert len(quiet_client.for_tenant(ACME).get_many(job_ids)) == 3
    with pytest.raises(JobNotFoundError):
        quiet_client.for_tenant(GLOBEX).get(job_ids[0])


def test_lists_show_the_tenants_own_batches_and_an_admin_sees_and_cancels_all(http: httpx.Client) -> None:
    acme_batch = _create(http, "acme", _upload(http, "acme"))
    globex_file = _upload(http, "globex", n=2)
    globex_batch = _create(http, "globex", globex_file)
    assert acme_batch in _listed(http, "acme") and globex_batch not in _listed(http, "acme")
    assert globex_batch in _listed(http, "globex") and acme_batch not in _listed(http, "globex")
    assert {acme_batch, globex_batch} <= _listed(http, "admin")
    assert http.get(f"/v1/files/{globex_file}/content", headers=_as("admin")).content.count(b"\n") == 2
    assert _batch(http, "admin", acme_batch)["id"] == acme_batch
    cancelled = http.post(f"/v1/batches/{globex_batch}/cancel", headers=_as("admin"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] in AFTER_CANCEL
    wait_until(lambda: _batch(http, "admin", globex_batch)["status"] == "cancelled", what="the batch to be cancelled")
    # A page boundary of another tenant's batch names nothing: the page starts at the newest.
    after_other = http.get("/v1/batches", params={"after": globex_batch}, headers=_as("acme")).json()["data"]
    assert after_other and all(b["id"] != globex_batch for b in after_other)
    admins_batch = _create(http, "admin", globex_file)  # an admin's batch is its own tenant's, as its jobs
    assert http.get(f"/v1/batches/{admins_batch}", headers=_as("globex")).status_code == 404
    assert http.delete(f"/v1/files/{globex_file}", headers=_as("admin")).status_code == 200


def test_scopes_limit_what_a_key_may_do_with_files_batches_and_endpoints(http: httpx.Client) -> None:
    file_id = _upload(http, "acme")
    batch_id = _create(http, "acme", file_id)
    refused = [
        http.post("/v1/files", files={"file": ("r.jsonl", b"{}\n")}, data={"purpose": "batch"}, headers=_as("reader")),
        http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/jobs"}, headers=_as("reader")),
        http.delete(f"/v1/files/{file_id}", headers=_as("reader")),
        http.post(f"/v1/batches/{batch_id}/cancel", headers=_as("reader")),
        http.post("/v1/webhooks/endpoints", json={"url": "https://93.184.216.34/hook"}, headers=_as("reader")),
    ]
    assert [r.status_code for r in refused] == [403] * 5, [r.text for r in refused]
    assert "'submit' scope" in refused[0].json()["detail"] and "'cancel' scope" in refused[3].json()["detail"]
    assert _batch(http, "reader", batch_id)["status"] in ("validating", "in_progress")  # same tenant: it reads
    assert http.get(f"/v1/files/{file_id}/content", headers=_as("reader")).status_code == 200
    assert http.get("/v1/webhooks/endpoints", headers=_as("reader")).status_code == 200
    assert http.get("/v1/batches", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_python_client_sees_its_tenants_batches_only(quiet_client: Client) -> None:
    quiet_client.batches.list_batches()  # the unscoped Client's Batches, made before a scoped Client copies it
    acme, globex = quiet_client.for_tenant(ACME), quiet_client.for_tenant(GLOBEX)
    batch = acme.submit_batch(_lines(2))
    assert batch.status == "in_progress" and _batch_tenants(quiet_client, batch.id) == {ACME}
    for attempt in (lambda: globex.batches.get(batch.id), lambda: globex.batches.cancel(batch.id),
                    lambda: list(globex.batches.results(batch.id)), lambda: globex.batches.file(batch.input_file_id),
                    lambda: globex.batches.file_content(batch.input_file_id),
                    lambda: globex.batches.delete_file(batch.input_file_id)):
        with pytest.raises(BatchNotFoundError, match=r"no (batch|file) with id"):
            attempt()
    assert batch.id not in {b.id for b in globex.batches.list_batches(limit=100).data}
    assert batch.id in {b.id for b in acme.batches.list_batches(limit=100).data}
    assert quiet_client.batches.get(batch.id).status == "in_progress"  # without a tenant: every tenant's
    assert acme.batches.cancel(batch.id).status in AFTER_CANCEL


def test_the_cli_acts_for_one_tenant_with_tenant(quiet_client: Client, tmp_path: Any) -> None:
    env = {"TEXTQ_DATABASE_URL": quiet_client.database_url, "TEXTQ_BROKER_URL": quiet_client.settings.broker_url}
    path = tmp_path / "cli.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in _lines(2)))
    submitted = textq("batch", "submit", str(path), "--json", "--tenant", ACME, env=env)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["id"]
    assert _batch_tenants(quiet_client, batch_id) == {ACME}  # created as acme, its jobs too
    assert quiet_client.for_tenant(ACME).batches.file(json.loads(submitted.stdout)["input_file_id"])
    # Another tenant: not found, as an unknown id; not listed. Its own tenant acts on it.
    hidden = textq("batch", "get", batch_id, "--tenant", GLOBEX, env=env)
    assert hidden.returncode == 1 and f"no batch with id '{batch_id}'" in hidden.stderr, hidden.stderr
    assert batch_id not in textq("batch", "list", "--limit", "100", "--tenant", GLOBEX, env=env).stdout
    assert textq("batch", "cancel", batch_id, "--tenant", ACME, env=env).stdout.strip() in AFTER_CANCEL
    bad = textq("batch", "list", "--tenant", "no spaces", env=env)
    assert bad.returncode == 2 and "tenant must be 1-" in bad.stderr


# -- webhook endpoints ----------------------------------------------------------------------------
def _register(http: httpx.Client, who: str, url: str) -> str:
    response = http.post("/v1/webhooks/endpoints", json={"url": url}, headers=_as(who))
    assert response.status_code == 201, response.text
    endpoint_id: str = response.json()["id"]
    return endpoint_id


def _received(receiver: Receiver, path: str) -> set[str]:
    return {json.loads(body)["data"]["id"] for _, body in receiver.successes(path)}


def _submit(http: httpx.Client, who: str) -> str:
    response = http.post("/v1/jobs", json={"text": unique_text("hook"), "model": "echo"}, headers=_as(who))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_an_endpoint_gets_only_its_tenants_events(worker: WorkerProcess, client: Client, receiver: Receiver,
                                                  senders: list[WebhookSender]) -> None:
    receiver.fail_first = 0
    with gateway(client) as http:
        acme_endpoint = _register(http, "acme", f"{receiver.url}/acme")
        globex_endpoint = _register(http, "globex", f"{receiver.url}/globex")
        acme_job, globex_job = _submit(http, "acme"), _submit(http, "globex")
        globex_batch = _create(http, "globex", _upload(http, "globex", n=2))
        wait_until(lambda: _batch(http, "globex", globex_batch)["status"] in FINAL, timeout=60, what="globex's batch to end")
        client.wait_many([acme_job, globex_job], timeout=60)
        wait_until(lambda: _received(receiver, "/acme") == {acme_job}
                   and _received(receiver, "/globex") >= {globex_job, globex_batch}, timeout=60, what="the events")
        # Deliveries are written with the result they report: none to another tenant's endpoint is still to come.
        ledger = session_factory(client.database_url)
        for subject, endpoint in [(acme_job, acme_endpoint), (globex_job, globex_endpoint), (globex_batch, globex_endpoint)]:
            assert {d.endpoint_id for d in deliveries(ledger, subject_id=subject)} == {endpoint}
        assert not _received(receiver, "/acme") & {globex_job, globex_batch}

        # The endpoints and the delivery log are per tenant too; an admin sees all.
        listed = {who: {e["id"] for e in http.get("/v1/webhooks/endpoints", headers=_as(who)).json()}
                  for who in ("acme", "globex", "admin")}
        assert listed["acme"] == {acme_endpoint} and listed["globex"] == {globex_endpoint}
        assert {acme_endpoint, globex_endpoint} <= listed["admin"]
        logged = http.get("/v1/webhooks/deliveries", params={"limit": 200}, headers=_as("acme")).json()
        assert {d["subject_id"] for d in logged} == {uuid.UUID(acme_job).hex}
        assert http.get("/v1/webhooks/deliveries", params={"subject_id": globex_job}, headers=_as("admin")).json()
        _assert_hidden(http, "acme", "POST", f"/v1/webhooks/endpoints/{globex_endpoint}/rotate", globex_endpoint)
        _assert_hidden(http, "acme", "DELETE", f"/v1/webhooks/endpoints/{globex_endpoint}", globex_endpoint)
        for who, endpoint in [("acme", acme_endpoint), ("globex", globex_endpoint)]:
            assert http.delete(f"/v1/webhooks/endpoints/{endpoint}", headers=_as(who)).status_code == 200
