"""The webhook sender: claims due deliveries from the ledger, POSTs them signed, logs each attempt,
and schedules retries with exponential backoff until the attempts run out (then the delivery fails).

Run any number of senders (`textq webhooks send`): a delivery is leased to one at a time. At least
once: a sender that dies after the POST but before recording it sends again after its lease ends.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from db import batches as batch_store
from db import store
from db import webhooks as ledger
from db.models import WebhookDelivery, WebhookEndpoint, utcnow
from producer.batches import BatchView
from producer.contract import JobView
from producer.webhooks import WebhookSettings, WebhookUrlError, check_url, signature_headers

log = logging.getLogger(__name__)

# What is kept of a receiver's answer and of an error: enough to debug, never a whole body.
EXCERPT_CHARS = 256


class WebhookSender:
    def __init__(self, sessions: sessionmaker[Session], settings: WebhookSettings, *, name: str | None = None) -> None:
        self.sessions = sessions
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._context = ssl.create_default_context()

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                sent = self.send_due()
            except Exception:  # the database is down, say: try again after a pause
                log.exception("webhook sender round failed")
                sent = 0
            if not sent:
                stop.wait(self.settings.poll_interval_s)

    def send_due(self) -> int:
        """Claim the due deliveries (up to claim_batch) and try each once; returns how many."""
        # A lease outlives the slowest round (every claimed delivery timing out), so no one else takes it meanwhile.
        lease = timedelta(seconds=self.settings.timeout_s * (self.settings.claim_batch + 1) * 2)
        with self.sessions.begin() as session:
            claimed = ledger.claim_due(session, owner=self.name, until=utcnow() + lease, limit=self.settings.claim_batch)
            endpoints = ledger.endpoints_by_id(session, ids=[d.endpoint_id for d in claimed if d.endpoint_id])
            payloads = {d.id: d.payload or _payload(session, d) for d in claimed}
        for delivery in claimed:
            self._attempt(delivery, payloads[delivery.id], endpoints)
        return len(claimed)

    def _attempt(self, delivery: WebhookDelivery, payload: str, endpoints: dict[str, WebhookEndpoint]) -> None:
        started = utcnow()
        clock = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        excerpt: str | None = None
        try:
            secrets = self._secrets(delivery, endpoints)
            body = payload.encode()
            headers = signature_headers(f"msg_{delivery.id}", int(time.time()), body, secrets)
            status_code, excerpt = self._post(delivery.url, body, headers)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
        except (OSError, http.client.HTTPException, WebhookUrlError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS]
        latency_ms = int((time.perf_counter() - clock) * 1000)
        attempts = delivery.attempts + 1
        retry = error is not None and attempts < self.settings.max_attempts
        next_at = utcnow() + timedelta(seconds=self.settings.backoff_s(attempts)) if retry else None
        with self.sessions.begin() as session:
            ledger.record_attempt(session, delivery=delivery, owner=self.name, payload=payload, started_at=started,
                                  latency_ms=latency_ms, status_code=status_code, error=error,
                                  response_excerpt=excerpt, next_attempt_at=next_at)
        if error is not None:
            what = f"retry in {self.settings.backoff_s(attempts):g}s" if retry else "giving up: delivery failed"
            log.warning("webhook msg_%d to %s attempt %d: %s; %s", delivery.id, _redacted(delivery.url), attempts, error, what)

    def _secrets(self, delivery: WebhookDelivery, endpoints: dict[str, WebhookEndpoint]) -> list[str]:
        if delivery.endpoint_id is None:
            return [s.get_secret_value() for s in self.settings.secrets] or _no_secret()
        endpoint = endpoints.get(delivery.endpoint_id)
        if endpoint is None:
            raise ValueError(f"endpoint {delivery.endpoint_id} was deleted")
        rotating = endpoint.previous_secret and endpoint.previous_until and endpoint.previous_until > utcnow()
        return [endpoint.secret, endpoint.previous_secret] if rotating else [endpoint.secret]  # type: ignore[list-item]

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """POST to an address checked now (so a name re-pointed inside the network since submit is refused);
        no redirects (http.client follows none)."""
        addresses = check_url(url, self.settings.allow_hosts)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = _PinnedHTTPS(parts.hostname or "", port, addresses[0], self.settings.timeout_s, self._context)
        else:
            connection = _PinnedHTTP(parts.hostname or "", port, addresses[0], self.settings.timeout_s)
        try:
            connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=body,
                               headers={**headers, "Content-Type": "application/json", "User-Agent": "textq-webhooks"})
            response = connection.getresponse()
            excerpt = response.read(EXCERPT_CHARS).decode("utf-8", "replace")
            return response.status, excerpt
        finally:
            connection.close()


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, not to whatever the name resolves to next."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address
        self.tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _no_secret() -> list[str]:
    raise ValueError("no secret to sign with: set TEXTQ_WEBHOOK_SECRETS for the sender")


def _payload(session: Session, delivery: WebhookDelivery) -> str:
    """The event's body, rendered at its first attempt from the job or batch as it is then."""
    data: dict[str, object]
    if delivery.event_type in ledger.JOB_EVENT_TYPES:
        job = store.get_job(session, job_id=uuid.UUID(delivery.subject_id))
        data = JobView.model_validate(job).model_dump(mode="json") if job else {"id": delivery.subject_id, "deleted": True}
    else:
        batch = batch_store.get_batch(session, batch_id=delivery.subject_id)
        data = BatchView.of(batch).model_dump(mode="json") if batch else {"id": delivery.subject_id, "deleted": True}
    return json.dumps({"type": delivery.event_type, "timestamp": delivery.created_at.isoformat(), "data": data},
                      separators=(",", ":"))


def _redacted(url: str) -> str:
    """The URL without its query (which may carry a token), for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


__all__ = ["EXCERPT_CHARS", "WebhookSender"]
