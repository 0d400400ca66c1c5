"""The store API of webhooks: endpoints, deliveries and their attempts.

A delivery is queued by `queue_job_events` / `queue_batch_job_events` / `queue_batch_event` inside
the transaction that writes the state it reports (a result, a cancel, an expiry), so a crash can
lose neither without the other. The event's type follows the state: `job.cancelled` and
`job.expired` for jobs that ended so, `job.finished` for the others (succeeded or failed); the same
for batches (`batch.finished`: completed or failed). Senders claim due deliveries
with a lease (one conditional UPDATE; SKIP LOCKED on PostgreSQL), so two never send one at once.
Endpoints and deliveries belong to a tenant: an endpoint gets only its tenant's jobs' and batches'
events, and a `tenant` argument limits a read or write to that tenant's rows (None: every tenant's).
Functions take a session, are keyword-only and never commit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    Uuid,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.engine import is_postgres
from db.models import (
    FINISHED_STATUSES,
    Batch,
    BatchStatus,
    DeliveryStatus,
    Job,
    JobStatus,
    UTCDateTime,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    of_tenant,
    utcnow,
)

JOB_FINISHED = "job.finished"
JOB_CANCELLED = "job.cancelled"
JOB_EXPIRED = "job.expired"
BATCH_FINISHED = "batch.finished"
BATCH_CANCELLED = "batch.cancelled"
BATCH_EXPIRED = "batch.expired"
JOB_EVENT_TYPES = (JOB_FINISHED, JOB_CANCELLED, JOB_EXPIRED)
EVENT_TYPES = (*JOB_EVENT_TYPES, BATCH_FINISHED, BATCH_CANCELLED, BATCH_EXPIRED)
DELIVERIES = cast(Table, WebhookDelivery.__table__)
_COLUMNS = ["event_type", "subject_id", "url", "endpoint_id", "target", "tenant", "status", "attempts", "next_attempt_at",
            "created_at"]
# A batch's jobs that a cancel or an expiry ends.
_ENDED_BY_BATCH = (JobStatus.CANCELLED.value, JobStatus.EXPIRED.value)


def _job_event_type() -> ColumnElement[str]:
    """The event a finished job's row reports, by its status."""
    return case((Job.status == JobStatus.CANCELLED.value, literal(JOB_CANCELLED, String())),
                (Job.status == JobStatus.EXPIRED.value, literal(JOB_EXPIRED, String())),
                else_=literal(JOB_FINISHED, String()))


def _batch_event_type() -> ColumnElement[str]:
    """The event an ended batch's row reports, by its status."""
    return case((Batch.status == BatchStatus.CANCELLED.value, literal(BATCH_CANCELLED, String())),
                (Batch.status == BatchStatus.EXPIRED.value, literal(BATCH_EXPIRED, String())),
                else_=literal(BATCH_FINISHED, String()))


def _subscribed(event_type: ColumnElement[str]) -> ColumnElement[bool]:
    return WebhookEndpoint.events.contains(event_type)


def _queue(session: Session, own: Any, endpoints: Any) -> None:
    session.execute(_insert_deliveries(session.get_bind().dialect.name, own, endpoints))


def _insert_deliveries(dialect: str, own: Any, endpoints: Any) -> Any:
    into = postgresql.insert(DELIVERIES) if dialect == "postgresql" else sqlite.insert(DELIVERIES)
    # The unique (event, subject, target) makes queueing twice (a retried write, two finalizers) one delivery.
    return into.from_select(_COLUMNS, union_all(own, endpoints)).on_conflict_do_nothing(
        index_elements=["event_type", "subject_id", "target"])


def _values(event_type: ColumnElement[str], subject: Any, url: Any, endpoint_id: Any, target: Any, tenant: Any,
            now: Any) -> list[Any]:
    # A job's id as 32 hex digits on every backend (PostgreSQL's text form has dashes, SQLite's none).
    if isinstance(now, datetime):
        now = literal(now, WebhookDelivery.created_at.type)
    return [event_type, func.replace(sql_cast(subject, String()), "-", ""), url, endpoint_id, target,
            tenant, literal(DeliveryStatus.PENDING.value, String()), literal(0), now, now]


class EndpointPresence:
    """Whether any webhook endpoint exists, read at most every `ttl_s`: the writer queues events for
    every finished job only while one does (an endpoint gets the events of jobs finished from about
    `ttl_s` after it is registered), and otherwise only for jobs with a webhook_url of their own."""

    def __init__(self, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._known: bool | None = None
        self._read_at = 0.0

    def any(self, session: Session) -> bool:
        now = time.monotonic()
        if self._known is None or now - self._read_at >= self.ttl_s:
            self._known = session.execute(select(WebhookEndpoint.id).limit(1)).first() is not None
            self._read_at = now
        return self._known


def queue_job_events(session: Session, *, job_ids: Sequence[uuid.UUID]) -> None:
    """Queue the event of each finished job among `job_ids` (job.finished, job.cancelled or
    job.expired, by its status): to its own webhook_url, and to every endpoint of the job's tenant
    subscribed to that type. Call it in the transaction that finishes them."""
    if not job_ids:
        return
    dialect = session.get_bind().dialect.name
    session.execute(_job_events_statement(dialect), {"event_job_ids": list(job_ids), "event_now": utcnow()})


def queue_batch_job_events(session: Session, *, batch_id: str) -> None:
    """Queue job.cancelled / job.expired for the batch's jobs that a cancel or an expiry ended; call it
    in that transaction. Jobs queued for before (cancelled one by one, say) stay one delivery each."""
    now = literal(utcnow(), WebhookDelivery.created_at.type)
    _queue(session, *_job_event_selects(now, [Job.batch_id == batch_id, Job.status.in_(_ENDED_BY_BATCH)]))


@lru_cache(maxsize=4)
def _job_events_statement(dialect: str) -> Any:
    """Built once per dialect, values bound: built per batch it cost the worker milliseconds of CPU."""
    ids = (Job.id == any_(bindparam("event_job_ids", type_=postgresql.ARRAY(Uuid()))) if dialect == "postgresql"
           else Job.id.in_(bindparam("event_job_ids", expanding=True, type_=Uuid())))
    now = bindparam("event_now", type_=UTCDateTime())
    return _insert_deliveries(dialect, *_job_event_selects(now, [ids, Job.status.in_(list(FINISHED_STATUSES))]))


def _job_event_selects(now: Any, which: list[ColumnElement[bool]]) -> tuple[Any, Any]:
    """The deliveries of the jobs `which` selects: to their own webhook_url, and to their tenant's endpoints."""
    event = _job_event_type()
    own = select(*_values(event, Job.id, Job.webhook_url, null(), literal("", String()), Job.tenant, now)).where(
        *which, Job.webhook_url.is_not(None))
    endpoints = (select(*_values(event, Job.id, WebhookEndpoint.url, WebhookEndpoint.id, WebhookEndpoint.id,
                                 Job.tenant, now))
                 .select_from(Job).join(WebhookEndpoint, WebhookEndpoint.tenant == Job.tenant)
                 .where(*which, _subscribed(event)))
    return own, endpoints


def queue_batch_event(session: Session, *, batch_id: str) -> None:
    """Queue the ended batch's event (batch.finished, batch.cancelled or batch.expired, by its status)
    to its own webhook_url and its tenant's subscribed endpoints; call it in the transaction that ends it."""
    now = utcnow()
    event = _batch_event_type()
    own = select(*_values(event, Batch.id, Batch.webhook_url, null(), literal("", String()), Batch.tenant,
                          now)).where(Batch.id == batch_id, Batch.webhook_url.is_not(None))
    endpoints = (select(*_values(event, Batch.id, WebhookEndpoint.url, WebhookEndpoint.id, WebhookEndpoint.id,
                                 Batch.tenant, now))
                 .select_from(Batch).join(WebhookEndpoint, WebhookEndpoint.tenant == Batch.tenant)
                 .where(Batch.id == batch_id, _subscribed(event)))
    _queue(session, own, endpoints)


def claim_due(session: Session, *, owner: str, until: datetime, limit: int) -> list[WebhookDelivery]:
    """Lease up to `limit` pending deliveries that are due and not leased to a live sender."""
    now = utcnow()
    free = or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now)
    due = (select(WebhookDelivery.id)
           .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now, free)
           .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    if is_postgres(session):
        due = due.with_for_update(skip_locked=True)
    # One statement: on SQLite it takes the write lock first, so a second sender waits, then finds them leased.
    claimed = session.scalars(
        update(WebhookDelivery).where(WebhookDelivery.id.in_(due.scalar_subquery()), free)
        .values(lease_owner=owner, lease_until=until).returning(WebhookDelivery.id),
        execution_options={"synchronize_session": False},
    ).all()
    if not claimed:
        return []
    rows = select(WebhookDelivery).where(WebhookDelivery.id.in_(list(claimed))).order_by(WebhookDelivery.id)
    return list(session.scalars(rows.execution_options(populate_existing=True)).all())


def record_attempt(session: Session, *, delivery: WebhookDelivery, owner: str, payload: str, started_at: datetime,
                   latency_ms: int, status_code: int | None, error: str | None, response_excerpt: str | None,
                   next_attempt_at: datetime | None) -> bool:
    """Log an attempt and set the delivery's state: delivered (2xx), due again at `next_attempt_at`,
    or failed (None). False, and nothing written, if the lease was lost meanwhile."""
    attempt = delivery.attempts + 1
    delivered = status_code is not None and 200 <= status_code < 300
    status = DeliveryStatus.DELIVERED if delivered else DeliveryStatus.PENDING if next_attempt_at else DeliveryStatus.FAILED
    result = session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_owner == owner)
        .values(status=status.value, attempts=attempt, payload=payload, lease_owner=None, lease_until=None,
                next_attempt_at=next_attempt_at or delivery.next_attempt_at, last_status_code=status_code,
                last_error=error, finished_at=None if status is DeliveryStatus.PENDING else utcnow()),
        execution_options={"synchronize_session": False},
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    session.execute(insert(WebhookAttempt).values(
        delivery_id=delivery.id, attempt=attempt, started_at=started_at, status_code=status_code, latency_ms=latency_ms,
        error=error, response_excerpt=response_excerpt))
    return True


def deliveries(session: Session, *, subject_id: str | None = None, status: DeliveryStatus | None = None,
               limit: int = 50, tenant: str | None = None) -> list[WebhookDelivery]:
    stmt = (select(WebhookDelivery).where(*of_tenant(WebhookDelivery.tenant, tenant))
            .order_by(WebhookDelivery.id.desc()).limit(limit))
    if subject_id is not None:
        stmt = stmt.where(WebhookDelivery.subject_id == subject_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return list(session.scalars(stmt).all())


def attempts_of(session: Session, *, delivery_id: int) -> list[WebhookAttempt]:
    stmt = select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.attempt)
    return list(session.scalars(stmt).all())


# -- endpoints ----------------------------------------------------------------------------------
def add_endpoint(session: Session, *, endpoint: WebhookEndpoint) -> None:
    session.add(endpoint)
    session.flush()


def get_endpoint(session: Session, *, endpoint_id: str, tenant: str | None = None) -> WebhookEndpoint | None:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, *of_tenant(WebhookEndpoint.tenant, tenant))
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def list_endpoints(session: Session, *, tenant: str | None = None) -> list[WebhookEndpoint]:
    stmt = select(WebhookEndpoint).where(*of_tenant(WebhookEndpoint.tenant, tenant)).order_by(WebhookEndpoint.created_at)
    return list(session.scalars(stmt).all())


def endpoints_by_id(session: Session, *, ids: Sequence[str]) -> dict[str, WebhookEndpoint]:
    found = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.id.in_(list(ids)))).all()
    return {e.id: e for e in found}


def rotate_secret(session: Session, *, endpoint_id: str, secret: str, previous_until: datetime,
                  tenant: str | None = None) -> bool:
    """The new secret signs from now on; the current one keeps signing too until `previous_until`."""
    result = session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, *of_tenant(WebhookEndpoint.tenant, tenant))
        .values(previous_secret=WebhookEndpoint.secret, previous_until=previous_until, secret=secret),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def delete_endpoint(session: Session, *, endpoint_id: str, tenant: str | None = None) -> bool:
    result = session.execute(
        delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, *of_tenant(WebhookEndpoint.tenant, tenant)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


__all__ = [
    "BATCH_CANCELLED",
    "BATCH_EXPIRED",
    "BATCH_FINISHED",
    "EVENT_TYPES",
    "JOB_CANCELLED",
    "JOB_EVENT_TYPES",
    "JOB_EXPIRED",
    "JOB_FINISHED",
    "EndpointPresence",
    "add_endpoint",
    "attempts_of",
    "claim_due",
    "delete_endpoint",
    "deliveries",
    "endpoints_by_id",
    "get_endpoint",
    "list_endpoints",
    "queue_batch_event",
    "queue_batch_job_events",
    "queue_job_events",
    "record_attempt",
    "rotate_secret",
]
