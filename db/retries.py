"""Operator retries of failed jobs: back to queued, with the failure kept as the job's history.

Functions take the caller's session and never commit, as in db/store.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, Uuid, bindparam, func, literal, select, tuple_, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.models import Job, JobStatus, UTCDateTime, utcnow

# Statuses an operator may retry: a failed job only (a cancelled one was stopped on purpose, an
# expired one's deadline has passed and would expire it again at once).
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED})


@dataclass(frozen=True, slots=True)
class RetryFilter:
    """Which failed jobs a bulk retry takes: every one of them when all fields are None."""

    model: str | None = None
    error_type: str | None = None
    finished_since: datetime | None = None
    tenant: str | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = [Job.status.in_(sorted(RETRYABLE_STATUSES))]
        if self.model is not None:
            found.append(Job.model == self.model)
        if self.error_type is not None:
            found.append(Job.error_type == self.error_type)
        if self.finished_since is not None:
            found.append(Job.finished_at >= self.finished_since)
        if self.tenant is not None:
            found.append(Job.tenant == self.tenant)
        return found


def retry_jobs(session: Session, *, ids: Sequence[uuid.UUID], tenant: str | None = None) -> list[tuple[uuid.UUID, str, int]]:
    """Put the failed jobs among `ids` back to queued; returns (id, model, priority) of each one put back.

    The attempts used so far move to `retried_attempts` (the budget starts again) and the error to
    `previous_error`; the job is marked published now, so the sweeper re-publishes it if its message is lost.
    """
    if not ids:
        return []
    now = utcnow()
    where: list[ColumnElement[bool]] = [Job.id.in_(list(ids)), Job.status.in_(sorted(RETRYABLE_STATUSES))]
    if tenant is not None:
        where.append(Job.tenant == tenant)
    error = func.coalesce(Job.error_type, literal("Error", String())) + literal(": ", String()) \
        + func.coalesce(Job.error_message, literal("", String()))
    result = session.execute(
        update(Job).where(*where).values(
            status=JobStatus.QUEUED, previous_error=error, retried_attempts=Job.retried_attempts + Job.attempts,
            attempts=0, retried_at=now, error_type=None, error_message=None, output=None, started_at=None,
            finished_at=None, worker=None, lease_until=None, retry_at=None, published_at=now, publish_count=1,
        ).returning(Job.id, Job.model, Job.priority),
        execution_options={"synchronize_session": False},
    )
    return [(job_id, model, priority) for job_id, model, priority in result.tuples()]


def count_retryable(session: Session, *, matching: RetryFilter) -> int:
    return int(session.execute(select(func.count()).select_from(Job).where(*matching.conditions())).scalar_one())


def retryable_ids(
    session: Session, *, matching: RetryFilter, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[tuple[datetime, uuid.UUID]]:
    """Up to `limit` (created_at, id) of matching jobs, oldest first, after the position `after`.

    Paging by position, not by status: a retried job that fails again at once is not taken twice.
    """
    stmt = select(Job.created_at, Job.id).where(*matching.conditions()).order_by(Job.created_at, Job.id).limit(limit)
    if after is not None:
        stmt = stmt.where(tuple_(Job.created_at, Job.id) > tuple_(
            bindparam("after_created_at", after[0], type_=UTCDateTime()), bindparam("after_id", after[1], type_=Uuid())))
    return [(created_at, job_id) for created_at, job_id in session.execute(stmt).tuples()]


def retry_status(session: Session, *, job_id: uuid.UUID, tenant: str | None = None) -> str | None:
    """The job's status (None: no such job for this tenant), to say why a retry was refused."""
    stmt = select(Job.status).where(Job.id == job_id)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    return session.execute(stmt).scalar_one_or_none()


__all__ = ["RETRYABLE_STATUSES", "RetryFilter", "count_retryable", "retry_jobs", "retry_status", "retryable_ids"]
