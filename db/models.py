"""The `jobs` table: one row per job, the ledger every other part reads and writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, MappedColumn, mapped_column
from sqlalchemy.sql.elements import ColumnElement


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
    # A batch's job: its batch, the input file's line and the line's custom_id (db/batches.py).
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    batch_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    custom_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Where to POST the finished job (db/webhooks.py queues the delivery in the result's transaction).
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The weights that computed the job: `name@N` for a fine-tuned model (set at submit when the
    # request pins it), a content hash of the weight files for others.
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # An operator's retry (db/retries.py): the error it ended with, and the attempts used before it.
    previous_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    retried_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retried_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A result cache hit (db/result_cache.py): the job that computed the output this job reused.
    cached_from: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)

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
        # Failed jobs only, newest first, with what the console groups them by (migration 0010).
        Index("ix_jobs_failed_created_id", "created_at", "id", postgresql_where=text("status = 'failed'"),
              sqlite_where=text("status = 'failed'"), postgresql_include=["model", "error_type", "finished_at"]),
        # Partial: jobs outside batches (most) cost these indexes nothing.
        Index("ix_jobs_batch_line", "batch_id", "batch_line",
              postgresql_where=text("batch_id IS NOT NULL"), sqlite_where=text("batch_id IS NOT NULL")),
        # Is any of the batch's jobs unfinished (a probe, not a scan of its finished ones), and its
        # counts by status (an index read): both asked on every poll of a batch of up to a million lines.
        Index("ix_jobs_batch_status", "batch_id", "status",
              postgresql_where=text("batch_id IS NOT NULL"), sqlite_where=text("batch_id IS NOT NULL")),
    )


class CachedResult(Base):
    """A succeeded job's output, for later jobs that ask the same model version the same thing
    (opt-in per model: `result_cache` in its spec). Keyed by a hash, so the table holds no input text."""

    __tablename__ = "result_cache"

    # sha256 of tenant, model spec, model version, task and input (worker/result_cache.py).
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The job that computed `output` (it may have been purged since).
    source_job_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    output: Mapped[Any] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Pruning by age and count goes per model, oldest first.
    __table_args__ = (Index("ix_result_cache_model_created", "model", "created_at"),)


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


class BatchStatus(StrEnum):
    """A batch's states, as the OpenAI Batch API names them."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINAL_BATCH_STATUSES = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})


def tenant_column() -> MappedColumn[Any]:
    """The owning tenant of a file, batch or webhook row, as `jobs.tenant` (existing rows: the default tenant)."""
    return mapped_column(String(TENANT_MAX_CHARS), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)


def of_tenant(column: InstrumentedAttribute[str], tenant: str | None) -> list[ColumnElement[bool]]:
    """The WHERE clauses that keep `tenant`'s rows by their tenant `column`: none when None (every tenant's)."""
    return [] if tenant is None else [column == tenant]


_UNFINISHED_BATCH = "status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"


class StoredFile(Base):
    """An uploaded batch input file, or a batch's output or error file; its bytes are in `file_chunks`."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    # Whose file: an upload's uploader, a batch's output and error files the batch's tenant.
    tenant: Mapped[str] = tenant_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FileChunk(Base):
    """Up to about a megabyte of a file's whole lines, so that files stream in and out in chunks."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(String(64), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_line: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """A batch of jobs from an input file (the OpenAI Batch API's object); its jobs carry `batch_id`."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    # Who created the batch: its jobs, its output and error files and its events are this tenant's.
    tenant: Mapped[str] = tenant_column()
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.VALIDATING)
    priority: Mapped[int] = mapped_column(Integer)
    skip_invalid_lines: Mapped[bool] = mapped_column(Boolean, default=False)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[Any | None] = mapped_column("metadata", JSONType, nullable=True)
    errors: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Lines that become jobs (valid ones, and invalid ones when skipped): known after validation.
    total: Mapped[int] = mapped_column(Integer, default=0)
    # The input file's lines handled so far by the loader (a resumed loader starts after them), and whether all are.
    loaded_lines: Mapped[int] = mapped_column(Integer, default=0)
    loaded: Mapped[bool] = mapped_column(Boolean, default=False)
    # Final counts, written when the batch ends (until then they are counted from its jobs).
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Who loads or finalizes the batch now, until when: another process takes over after.
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_batches_created_at", "created_at"),
        Index("ix_batches_tenant_created_id", "tenant", "created_at", "id"),
        Index("ix_batches_unfinished", "status", postgresql_where=text(_UNFINISHED_BATCH),
              sqlite_where=text(_UNFINISHED_BATCH)),
    )


class WebhookEndpoint(Base):
    """A URL registered to receive events, with its signing secret (and the previous one while it is rotated)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    # The endpoint receives the events of this tenant's jobs and batches only.
    tenant: Mapped[str] = tenant_column()
    # Comma-separated event types (job.finished, batch.finished): matched with LIKE on every backend.
    events: Mapped[str] = mapped_column(String(255))
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One event for one URL: written with the result it reports, sent (and retried) by a webhook sender.

    Its id is the message's `webhook-id`, the same on every attempt, so receivers deduplicate by it.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    endpoint_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The endpoint's id, or '' for the job's or batch's own webhook_url: one delivery per event and target.
    target: Mapped[str] = mapped_column(String(64))
    # The tenant of the job or batch it reports: a tenant's delivery log shows only its own.
    tenant: Mapped[str] = tenant_column()
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The body as first sent: every retry sends the same bytes.
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        UniqueConstraint("event_type", "subject_id", "target", name="uq_webhook_deliveries_event_target"),
        Index("ix_webhook_deliveries_tenant_id", "tenant", "id"),
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
    )


class WebhookAttempt(Base):
    """One try at a delivery: what the receiver answered and how long it took (bodies only as an excerpt)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(Integer, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_excerpt: Mapped[str | None] = mapped_column(Text, nullable=True)


class ModelVersion(Base):
    """One version of a fine-tuned model: its weights directory in the model store and how it was made.

    At most one version of a model is active: the one its unpinned jobs run on.
    """

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    # The weights directory, relative to the model store (TEXTQ_MODEL_STORE may differ per machine).
    path: Mapped[str] = mapped_column(Text)
    base: Mapped[str] = mapped_column(Text)
    data_hash: Mapped[str] = mapped_column(String(80))
    labels: Mapped[Any] = mapped_column(JSONType)
    metrics: Mapped[Any] = mapped_column(JSONType)
    training_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A deleted version keeps its row, so that its number is never given to another version.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
        Index("ux_model_versions_active", "model", unique=True,
              postgresql_where=text("active"), sqlite_where=text("active")),
    )

    @property
    def label(self) -> str:
        return f"{self.model}@{self.version}"


class Feedback(Base):
    """A corrected label for a finished classification job; the text is copied so that it outlives job retention."""

    __tablename__ = "feedback"

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_feedback_model_created", "model", "created_at"),)
