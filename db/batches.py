"""The store API of batches and their files: every read and write of `files`, `file_chunks`,
`batches` and the batch columns of `jobs`.

As in db/store.py, functions take a session, are keyword-only and never commit. A `tenant` argument
limits a read or write to that tenant's files and batches (another tenant's is as if missing); None
means every tenant's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db import webhooks
from db.engine import is_postgres
from db.models import Batch, BatchStatus, FileChunk, Job, JobStatus, StoredFile, of_tenant, utcnow
from db.store import EXPIRED_ERROR, EXPIRED_MESSAGE

JOBS = cast(Table, Job.__table__)
UNFINISHED_BATCH_STATUSES = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
_UNFINISHED_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)


# -- files --------------------------------------------------------------------------------------
def add_file(session: Session, *, file: StoredFile) -> None:
    session.add(file)
    session.flush()


def add_chunk(session: Session, *, file_id: str, seq: int, first_line: int, data: bytes) -> None:
    session.execute(insert(FileChunk).values(file_id=file_id, seq=seq, first_line=first_line, data=data))


def get_file(session: Session, *, file_id: str, tenant: str | None = None) -> StoredFile | None:
    stmt = select(StoredFile).where(StoredFile.id == file_id, *of_tenant(StoredFile.tenant, tenant))
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def read_chunk(session: Session, *, file_id: str, seq: int) -> FileChunk | None:
    return session.get(FileChunk, (file_id, seq), populate_existing=True)


def chunk_with_line(session: Session, *, file_id: str, line: int) -> int:
    """The seq of the chunk holding `line` (1-based), or of the first chunk."""
    found = session.scalar(
        select(func.max(FileChunk.seq)).where(FileChunk.file_id == file_id, FileChunk.first_line <= line)
    )
    return int(found or 0)


def delete_file(session: Session, *, file_id: str, tenant: str | None = None) -> bool:
    """Delete a file and its chunks; False if there was none (or it is another tenant's)."""
    owned = delete(StoredFile).where(StoredFile.id == file_id, *of_tenant(StoredFile.tenant, tenant))
    if not session.execute(owned).rowcount:  # type: ignore[attr-defined]
        return False
    # Explicit: SQLite enforces no foreign keys (no ON DELETE CASCADE) unless a pragma asks.
    session.execute(delete(FileChunk).where(FileChunk.file_id == file_id))
    return True


# -- batches ------------------------------------------------------------------------------------
def add_batch(session: Session, *, batch: Batch) -> None:
    session.add(batch)
    session.flush()


def get_batch(session: Session, *, batch_id: str, tenant: str | None = None) -> Batch | None:
    stmt = select(Batch).where(Batch.id == batch_id, *of_tenant(Batch.tenant, tenant))
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def list_batches(session: Session, *, limit: int, after: str | None = None, tenant: str | None = None) -> list[Batch]:
    """Newest first; `after` is the id of the previous page's last batch."""
    stmt = select(Batch).where(*of_tenant(Batch.tenant, tenant)).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
    if after is not None:
        last = get_batch(session, batch_id=after, tenant=tenant)
        if last is not None:
            stmt = stmt.where(or_(Batch.created_at < last.created_at,
                                  and_(Batch.created_at == last.created_at, Batch.id < last.id)))
    return list(session.scalars(stmt).all())


def unfinished_batch_ids(session: Session, *, limit: int = 1000) -> list[str]:
    stmt = select(Batch.id).where(Batch.status.in_(UNFINISHED_BATCH_STATUSES)).order_by(Batch.created_at).limit(limit)
    return list(session.scalars(stmt).all())


def take_lease(session: Session, *, batch_id: str, owner: str, until: datetime, loaded: bool,
               statuses: Sequence[BatchStatus], tenant: str | None = None) -> bool:
    """Compare-and-set: lease the batch to `owner` if it is in `statuses`, its `loaded` flag is as
    given and no other lease is valid. Two processes never both get it."""
    now = utcnow()
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(statuses), Batch.loaded == loaded, *of_tenant(Batch.tenant, tenant),
               or_(Batch.lease_until.is_(None), Batch.lease_until < now, Batch.lease_owner == owner))
        .values(lease_owner=owner, lease_until=until),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_lease(session: Session, *, batch_id: str, owner: str, until: datetime, **values: Any) -> Batch | None:
    """Extend `owner`'s lease and set `values`; the batch as it is now, or None if the lease was lost.

    The UPDATE comes first in the loader's transaction: it locks the batch row, so a concurrent
    cancel is either seen here or sees what this transaction inserts.
    """
    result = session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner).values(lease_until=until, **values),
        execution_options={"synchronize_session": False},
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    return get_batch(session, batch_id=batch_id)


def end_batch(session: Session, *, batch_id: str, owner: str, **values: Any) -> bool:
    """Set `values` and release the lease, if `owner` still holds it."""
    result = session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner)
        .values(lease_owner=None, lease_until=None, **values),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def start_finalizing(session: Session, *, batch_id: str, owner: str, until: datetime) -> bool:
    """Compare-and-set: the batch is loaded and none of its jobs is unfinished (or a finalizer's
    lease ran out): it becomes `finalizing`, leased to `owner`."""
    now = utcnow()
    unfinished = exists().where(JOBS.c.batch_id == batch_id, JOBS.c.status.in_(_UNFINISHED_JOB))
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.loaded.is_(True),
            or_(
                and_(Batch.status.in_([BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING]), ~unfinished),
                and_(Batch.status == BatchStatus.FINALIZING, Batch.lease_until < now),
            ),
        )
        .values(status=BatchStatus.FINALIZING, finalizing_at=func.coalesce(Batch.finalizing_at, now),
                lease_owner=owner, lease_until=until),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def request_cancel(session: Session, *, batch_id: str, tenant: str | None = None) -> bool:
    """Mark an unfinished, unfinalized batch cancelling and cancel its unfinished jobs."""
    now = utcnow()
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_([BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS]),
               *of_tenant(Batch.tenant, tenant))
        .values(status=BatchStatus.CANCELLING, cancelling_at=now),
        execution_options={"synchronize_session": False},
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    session.execute(
        update(JOBS).where(JOBS.c.batch_id == batch_id, JOBS.c.status.in_(_UNFINISHED_JOB))
        .values(status=JobStatus.CANCELLED.value, finished_at=now, lease_until=None)
    )
    webhooks.queue_batch_job_events(session, batch_id=batch_id)  # job.cancelled, with the cancel
    return True


def expire_batch_jobs(session: Session, *, batch_id: str) -> int:
    """End the batch's queued jobs `expired` (its completion window is over), with their job.expired
    events; running ones finish."""
    result = session.execute(
        update(JOBS).where(JOBS.c.batch_id == batch_id, JOBS.c.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.EXPIRED.value, finished_at=utcnow(), error_type=EXPIRED_ERROR,
                error_message=EXPIRED_MESSAGE)
    )
    expired = int(result.rowcount)  # type: ignore[attr-defined]
    if expired:
        webhooks.queue_batch_job_events(session, batch_id=batch_id)
    return expired


# -- the batch's jobs ---------------------------------------------------------------------------
def insert_batch_jobs(session: Session, *, rows: Sequence[dict[str, Any]]) -> None:
    """Insert job rows (full column dicts); a row whose id exists already (a resumed loader
    inserting a line again) is skipped."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    statement = (postgresql.insert(JOBS) if dialect == "postgresql" else sqlite.insert(JOBS)).on_conflict_do_nothing(
        index_elements=["id"])
    session.execute(statement, list(rows))


def refresh_job_statistics(session: Session) -> None:
    """Have PostgreSQL's planner re-sample the jobs table (ANALYZE; ~30,000 rows, whatever its size).

    After a bulk load its statistics may still describe the table before: with a million new queued
    rows unknown to it, the worker's claim (`id = ANY(...)`) was planned as a scan of every queued
    job of the model through the (status, model) index instead of primary-key probes: 2.7 s per
    claim. Autovacuum analyzes only after 10% of a table changed, a minute later, or never where it
    is off. SQLite plans these statements by its indexes alone: nothing to do there.
    """
    if is_postgres(session):
        session.execute(text(f"ANALYZE {JOBS.name}"))


def batch_job_counts(session: Session, *, batch_id: str) -> dict[str, int]:
    """How many of the batch's jobs are in each status."""
    rows = session.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)).tuples()
    return dict(rows.all())


def batch_jobs_page(session: Session, *, batch_id: str, after_line: int, limit: int) -> list[Job]:
    """The batch's jobs in input-file order, from the line after `after_line`."""
    stmt = (select(Job).where(Job.batch_id == batch_id, Job.batch_line > after_line)
            .order_by(Job.batch_line).limit(limit))
    return list(session.scalars(stmt).all())


__all__ = [
    "UNFINISHED_BATCH_STATUSES",
    "add_batch",
    "add_chunk",
    "add_file",
    "batch_job_counts",
    "batch_jobs_page",
    "chunk_with_line",
    "delete_file",
    "end_batch",
    "expire_batch_jobs",
    "get_batch",
    "get_file",
    "insert_batch_jobs",
    "list_batches",
    "read_chunk",
    "refresh_job_statistics",
    "renew_lease",
    "request_cancel",
    "start_finalizing",
    "take_lease",
    "unfinished_batch_ids",
]
