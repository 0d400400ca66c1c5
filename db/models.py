"""The `jobs` table: one row per job, the ledger every other part reads and writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# The tenant of jobs submitted without one: every job of a single-tenant deployment.
DEFAULT_TENANT = "default"
TENANT_MAX_CHARS = 64

FINISHED_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores no zone, so it is attached on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: textq stores UTC-aware timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    model: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    input: Mapped[Any] = mapped_column(JSONType)
    output: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Who submitted the job: a tenant sees only its own jobs (idempotency keys are per tenant too).
    tenant: Mapped[str] = mapped_column(String(TENANT_MAX_CHARS), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the current claim stops protecting a running job (a dead worker's jobs become claimable).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Deadline: a job still unfinished past it is not computed and ends expired.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Last time a message for this job was sent; the sweeper re-publishes from it with backoff.
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    publish_count: Mapped[int] = mapped_column(Integer, default=0)
    # A job released for a retry is not claimed before this time (its backoff).
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')",
            name="ck_jobs_status",
        ),
        Index("ix_jobs_status_model_created", "status", "model", "created_at"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # Keyset paging newest first: (created_at, id) is the page boundary, with and without a tenant.
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_tenant_created_id", "tenant", "created_at", "id"),
        Index("ix_jobs_finished_at", "finished_at"),
        Index(
            "ix_jobs_unfinished_priority_created",
            "priority",
            "created_at",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )


class Worker(Base):
    """One running worker process. It rewrites its row every heartbeat; a row left unwritten for a
    few heartbeats is a dead worker, whose jobs the sweepers hand to the living."""

    # A table, not a Redis key with a TTL: it survives a Redis flush, and status and the console list it.
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid, as in jobs.worker
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    models: Mapped[list[str]] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    jobs_in_hand: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))
