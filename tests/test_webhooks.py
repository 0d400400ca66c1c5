"""Signed webhooks from the ledger: a receiver on 127.0.0.1 that fails at first gets each event
later, once, signed; unsafe URLs are refused at submit; redirects are not followed."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from db import sweeps
from db.engine import session_factory
from db.models import utcnow
from producer import Client, InvalidJobError
from producer.batch_errors import BatchInputError
from producer.gateway import GatewaySettings, create_app
from producer.webhook_endpoints import EndpointRequest, deliveries, register
from producer.webhook_sender import EXCERPT_CHARS, WebhookSender
from producer.webhooks import WebhookSettings, new_secret, verify, webhook_settings
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import computed_texts, unique_text, wait_until

SECRET = new_secret()
KEY = "hook-key-" + uuid.uuid4().hex


@dataclass
class Receiver:
    """A webhook receiver that answers 500 to each message's first `fail_first` attempts."""

    fail_first: int = 2
    received: list[tuple[str, dict[str, str], bytes, int]] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        message_id = headers.get("webhook-id", "")
        tries = sum(1 for p, h, _, _ in self.received if h.get("webhook-id") == message_id and p == path)
        if path == "/redirect":
            code, extra, reply = 302, {"Location": f"{self.url}/elsewhere"}, b""
        elif tries < self.fail_first:
            code, extra, reply = 500, {}, b"not yet"
        else:
            code, extra, reply = 200, {}, b"ok" * 5000  # a long body: only an excerpt is stored
        self.received.append((path, headers, body, code))
        return code, extra, reply

    def successes(self, path: str = "/hook") -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b, code in self.received if p == path and code == 200]


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code, extra, reply = state.answer(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(code)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


@pytest.fixture()
def hook_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookSettings]:
    """Webhooks allowed to 127.0.0.1 (the test's receiver), fast retries."""
    monkeypatch.setenv("TEXTQ_WEBHOOK_SECRETS", SECRET)
    monkeypatch.setenv("TEXTQ_WEBHOOK_ALLOW_HOSTS", "127.0.0.1")
    webhook_settings.cache_clear()
    yield WebhookSettings(backoff_base_s=0.1, max_attempts=4, poll_interval_s=0.05, timeout_s=2)
    webhook_settings.cache_clear()


@pytest.fixture()
def senders(backend: Backend, hook_env: WebhookSettings) -> Iterator[list[WebhookSender]]:
    """Two senders racing over the same deliveries, as two `textq webhooks send` would."""
    stop = threading.Event()
    sessions = session_factory(backend.database_url)
    running = [WebhookSender(sessions, hook_env, name=f"sender-{i}") for i in range(2)]
    threads = [threading.Thread(target=s.run_forever, args=(stop,), daemon=True) for s in running]
    for thread in threads:
        thread.start()
    yield running
    stop.set()
    for thread in threads:
        thread.join(timeout=10)


def test_job_webhooks_arrive_once_per_event_signed_after_failures(
    worker: WorkerProcess, client: Client, receiver: Receiver, senders: list[WebhookSender], backend: Backend
) -> None:
    jobs = [client.submit({"text": unique_text("hook"), "model": "echo", "webhook_url": f"{receiver.url}/hook"})
            for _ in range(3)]
    client.wait_many([j.id for j in jobs], timeout=60)
    wait_until(lambda: len(receiver.successes()) == 3, timeout=60, what="three delivered webhooks")
    delivered = receiver.successes()
    by_job = {json.loads(body)["data"]["id"]: (headers, body) for headers, body in delivered}
    assert set(by_job) == {str(j.id) for j in jobs}
    for headers, body in delivered:
        assert verify(SECRET, headers, body) and not verify(new_secret(), headers, body)
        event = json.loads(body)
        assert event["type"] == "job.finished" and event["data"]["status"] == "succeeded"
    # Every attempt of a message carries the same webhook-id; two senders never sent one attempt twice.
    tries = Counter(h["webhook-id"] for p, h, _, _ in receiver.received if p == "/hook")
    assert sorted(tries.values()) == [3, 3, 3]
    log = deliveries(session_factory(backend.database_url), subject_id=str(jobs[0].id))
    assert [d.status for d in log] == ["delivered"]
    assert [a.status_code for a in log[0].attempts] == [500, 500, 200]
    assert all(a.latency_ms >= 0 for a in log[0].attempts) and log[0].attempts[0].response_excerpt == "not yet"
    assert len(log[0].attempts[-1].response_excerpt or "") == EXCERPT_CHARS


def test_redirects_are_not_followed_and_the_delivery_fails_after_its_attempts(
    worker: WorkerProcess, client: Client, receiver: Receiver, senders: list[WebhookSender], backend: Backend
) -> None:
    job = client.submit({"text": unique_text("redirect"), "model": "echo", "webhook_url": f"{receiver.url}/redirect"})
    wait_until(lambda: [d.status for d in deliveries(session_factory(backend.database_url), subject_id=str(job.id))]
               == ["failed"], timeout=60, what="the delivery to fail")
    (log,) = deliveries(session_factory(backend.database_url), subject_id=str(job.id))
    assert [a.status_code for a in log.attempts] == [302, 302, 302, 302]
    assert "redirects are not followed" in (log.attempts[0].error or "")
    assert not [r for r in receiver.received if r[0] == "/elsewhere"]


def test_batch_and_endpoint_webhooks_with_a_rotated_secret(
    worker: WorkerProcess, client: Client, receiver: Receiver, senders: list[WebhookSender], hook_env: WebhookSettings
) -> None:
    receiver.fail_first = 0
    with TestClient(create_app(client, GatewaySettings(keys=[KEY])), headers={"X-API-Key": KEY}) as api:
        created = api.post("/v1/webhooks/endpoints", json={"url": f"{receiver.url}/endpoint", "events": ["batch.finished"]})
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_")
        assert "secret" not in str(api.get("/v1/webhooks/endpoints").json()[0].get("secret") or "")
        rotated = api.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate", json={"grace_s": 3600}).json()
        assert rotated["secret"] != endpoint["secret"]
        lines = [{"custom_id": f"w-{i}", "method": "POST", "url": "/v1/jobs", "body": {"text": unique_text(), "model": "echo"}}
                 for i in range(3)]
        batch = client.submit_batch(lines, webhook_url=f"{receiver.url}/hook")
        client.batches.wait(batch.id, timeout=60, poll_interval=0.2)
        wait_until(lambda: receiver.successes("/hook") and receiver.successes("/endpoint"), timeout=30,
                   what="the batch event at both URLs")
        api.delete(f"/v1/webhooks/endpoints/{endpoint['id']}")
    (own_headers, own_body), = receiver.successes("/hook")
    event = json.loads(own_body)
    assert event["type"] == "batch.finished" and event["data"]["id"] == batch.id
    assert event["data"]["status"] == "completed" and event["data"]["request_counts"]["completed"] == 3
    assert verify(SECRET, own_headers, own_body)
    (headers, body), = receiver.successes("/endpoint")
    assert len(headers["webhook-signature"].split()) == 2  # both secrets sign during the rotation
    assert verify(endpoint["secret"], headers, body) and verify(rotated["secret"], headers, body)


ENDED_EVENTS = ["job.cancelled", "job.expired", "batch.cancelled", "batch.expired"]


@contextmanager
def sending(database_url: str, settings: WebhookSettings) -> Iterator[None]:
    """A webhook sender over `database_url` while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(target=WebhookSender(session_factory(database_url), settings).run_forever, args=(stop,),
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _events(receiver: Receiver, path: str) -> Counter[tuple[str, str, str]]:
    """(type, subject id, its status) of each message delivered to `path`."""
    found: Counter[tuple[str, str, str]] = Counter()
    for _, body in receiver.successes(path):
        event = json.loads(body)
        found[(event["type"], str(event["data"]["id"]), event["data"]["status"])] += 1
    return found


def _batch_lines(n: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"l-{i}", "method": "POST", "url": "/v1/jobs", "body": {"text": unique_text(), "model": "echo"}}
            for i in range(n)]


def test_cancels_and_expiries_of_jobs_and_batches_send_their_events(
    isolated_backend: Backend, receiver: Receiver, hook_env: WebhookSettings
) -> None:
    """No worker: every job stays queued until a cancel or an expiry ends it, each with its event,
    queued in the transaction of the state change, to the own webhook_url and the tenant's endpoint."""
    receiver.fail_first = 0
    own = f"{receiver.url}/hook"
    ledger = session_factory(isolated_backend.database_url)
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as unscoped:
        client = unscoped.for_tenant(f"hooks-{uuid.uuid4().hex[:8]}")
        endpoint = register(ledger, hook_env, EndpointRequest(url=f"{receiver.url}/endpoint", events=ENDED_EVENTS),
                            tenant=client.tenant)
        cancelled = client.submit({"text": unique_text("cancel"), "model": "echo", "webhook_url": own})
        assert client.cancel(cancelled.id).status == "cancelled"
        # In the cancel's transaction: both deliveries exist as soon as the job reads cancelled.
        assert {(d.event_type, d.endpoint_id) for d in deliveries(ledger, subject_id=str(cancelled.id))} == {
            ("job.cancelled", None), ("job.cancelled", endpoint.id)}
        overdue = client.submit({"text": unique_text("late"), "model": "echo", "webhook_url": own, "timeout": 0.05})
        wait_until(lambda: utcnow() > (overdue.expires_at or utcnow()), what="the job's deadline")
        with ledger.begin() as session:  # what each worker's sweeper does
            assert sweeps.expire_overdue_jobs(session) == 1
        batch_cancelled = client.submit_batch(_batch_lines(3), webhook_url=own)
        assert client.batches.cancel(batch_cancelled.id).status == "cancelled"
        batch_expired = client.submit_batch(_batch_lines(3), webhook_url=own, completion_window="1s")
        assert client.batches.wait(batch_expired.id, timeout=30, poll_interval=0.1).status == "expired"
        job_ids = {b.id: [str(r["response"]["request_id"]) for r in client.batches.results(b.id)]
                   for b in (batch_cancelled, batch_expired)}
        ended = {("job.cancelled", str(cancelled.id), "cancelled"), ("job.expired", str(overdue.id), "expired"),
                 ("batch.cancelled", batch_cancelled.id, "cancelled"), ("batch.expired", batch_expired.id, "expired")}
        their_jobs = {("job.cancelled", j, "cancelled") for j in job_ids[batch_cancelled.id]} | {
            ("job.expired", j, "expired") for j in job_ids[batch_expired.id]}
        with sending(isolated_backend.database_url, hook_env):
            wait_until(lambda: set(_events(receiver, "/hook")) == ended
                       and set(_events(receiver, "/endpoint")) == ended | their_jobs, timeout=30, what="every event")
    assert set(_events(receiver, "/hook").values()) == set(_events(receiver, "/endpoint").values()) == {1}
    for headers, body in receiver.successes("/hook"):
        assert verify(SECRET, headers, body)
    for headers, body in receiver.successes("/endpoint"):
        assert endpoint.secret is not None and verify(endpoint.secret, headers, body)


def test_a_job_cancelled_while_it_runs_and_one_expired_at_its_claim_send_one_event_each(
    worker: WorkerProcess, client: Client, receiver: Receiver, senders: list[WebhookSender], backend: Backend
) -> None:
    receiver.fail_first = 0
    own = f"{receiver.url}/worker-hook"
    text = unique_text("running")
    running = client.submit({"text": text, "model": "slow", "webhook_url": own})
    wait_until(lambda: client.get(running.id).status == "running", what="the slow job to run")
    assert client.cancel(running.id).status == "cancelled"
    # A deadline that passes before any worker can claim the job: it ends expired unrun.
    late = client.submit({"text": unique_text("late"), "model": "slow", "webhook_url": own, "timeout": 0.001})
    after = client.submit({"text": unique_text("after"), "model": "slow"})
    # The slow model's batches are written in order: once `after` is written, the cancelled one's batch was.
    assert [v.status for v in client.wait_many([late.id, after.id], timeout=60)] == ["expired", "succeeded"]
    assert computed_texts("slow")[text] == 1  # it ran; its result was discarded
    wait_until(lambda: len(receiver.successes("/worker-hook")) == 2, timeout=30, what="two events")
    assert _events(receiver, "/worker-hook") == Counter({("job.cancelled", str(running.id), "cancelled"): 1,
                                                        ("job.expired", str(late.id), "expired"): 1})
    ledger = session_factory(backend.database_url)
    assert [d.event_type for d in deliveries(ledger, subject_id=str(running.id))] == ["job.cancelled"]


@pytest.mark.parametrize(("url", "rule"), [
    ("http://example.com/hook", "must use https://"),
    ("https://127.0.0.1/hook", "inside the network"),
    ("https://10.1.2.3/hook", "inside the network"),
    ("https://169.254.169.254/latest/meta-data", "inside the network"),
    ("https://[::1]/hook", "inside the network"),
    ("https://user:pw@93.184.216.34/hook", "must not carry credentials"),
    ("ftp://93.184.216.34/hook", "absolute https:// URL"),
])
def test_unsafe_webhook_urls_are_refused_at_submit(client: Client, monkeypatch: pytest.MonkeyPatch, url: str,
                                                   rule: str) -> None:
    monkeypatch.setenv("TEXTQ_WEBHOOK_SECRETS", SECRET)
    webhook_settings.cache_clear()
    try:
        with pytest.raises(InvalidJobError, match=f"webhook_url: .*{rule}") as refused:
            client.submit({"text": "hello", "webhook_url": url})
        assert refused.value.errors[0].field == "webhook_url"
        with pytest.raises(BatchInputError, match=rule):
            client.submit_batch([{"custom_id": "a", "method": "POST", "url": "/v1/jobs", "body": {"text": "a"}}],
                                webhook_url=url)
        with TestClient(create_app(client, GatewaySettings(keys=[KEY])), headers={"X-API-Key": KEY}) as api:
            response = api.post("/v1/jobs", json={"text": "hello", "webhook_url": url})
            assert response.status_code == 422 and rule in response.text
            response = api.post("/v1/webhooks/endpoints", json={"url": url})
            assert response.status_code == 400 and rule in response.text
    finally:
        webhook_settings.cache_clear()


def test_a_webhook_url_needs_a_signing_secret(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTQ_WEBHOOK_SECRETS", raising=False)
    webhook_settings.cache_clear()
    with pytest.raises(InvalidJobError, match="webhook_url: needs a signing secret: set TEXTQ_WEBHOOK_SECRETS"):
        client.submit({"text": "hello", "webhook_url": "https://93.184.216.34/hook"})
    with pytest.raises(ValueError, match="starts with 'whsec_'"):
        WebhookSettings(secrets="not-a-secret")  # type: ignore[arg-type]
