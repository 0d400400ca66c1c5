"""The reads behind an operator's overview (the console and /metrics): per-model counts, the oldest
queued job, throughput and latency per minute, failures grouped by error. Each stays one index
range read on a big table (bench/queries.py times them on a million rows)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db.engine import is_postgres
from db.models import Job, JobStatus


@dataclass(frozen=True, slots=True)
class MinuteStats:
    """Jobs of one model that finished in one minute, and their latency (created to finished)."""

    minute: datetime
    model: str
    finished: int
    p50_s: float
    p95_s: float


@dataclass(frozen=True, slots=True)
class FailureGroup:
    model: str
    error_type: str
    count: int
    last_failed_at: datetime | None


def oldest_queued(session: Session, *, models: Collection[str]) -> dict[str, datetime | None]:
    """When each model's oldest queued job was created: one index lookup per model (status, model, created_at)."""
    return {model: session.execute(
        select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED, Job.model == model)
    ).scalar_one() for model in models}


def unfinished_counts(session: Session, *, tenant: str | None = None) -> dict[tuple[str, str], int]:
    """(model, status) → how many jobs are queued or running now."""
    stmt = select(Job.model, Job.status, func.count()).where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    return {(m, s): n for m, s, n in session.execute(stmt.group_by(Job.model, Job.status)).tuples()}


def finished_counts(session: Session, *, since: datetime, tenant: str | None = None) -> dict[tuple[str, str], int]:
    """(model, status) → how many jobs finished since `since` (the finished_at index's range)."""
    stmt = select(Job.model, Job.status, func.count()).where(Job.finished_at >= since)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    return {(m, s): n for m, s, n in session.execute(stmt.group_by(Job.model, Job.status)).tuples()}


_MINUTES_POSTGRES = text(
    """SELECT date_trunc('minute', finished_at) AS minute, model, count(*),
              percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),
              percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
       FROM jobs WHERE finished_at >= :since AND status = 'succeeded' AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)
       GROUP BY 1, 2 ORDER BY 1, 2"""
)


def minute_stats(session: Session, *, since: datetime, tenant: str | None = None) -> list[MinuteStats]:
    """Succeeded jobs per minute and model since `since`, with p50/p95 latency: PostgreSQL computes
    them; SQLite (a laptop's few jobs) hands the latencies over to be computed here."""
    if is_postgres(session):
        rows = session.execute(_MINUTES_POSTGRES, {"since": since, "tenant": tenant}).tuples()
        return [MinuteStats(minute, model, n, float(p50), float(p95)) for minute, model, n, p50, p95 in rows]
    stmt = select(Job.model, Job.created_at, Job.finished_at).where(Job.finished_at >= since,
                                                                    Job.status == JobStatus.SUCCEEDED)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    latencies: dict[tuple[datetime, str], list[float]] = defaultdict(list)
    for model, created, finished in session.execute(stmt).tuples():
        assert finished is not None  # the filter on finished_at
        latencies[(finished.replace(second=0, microsecond=0), model)].append((finished - created).total_seconds())
    return [MinuteStats(minute, model, len(values), statistics.median(values), _percentile(values, 0.95))
            for (minute, model), values in sorted(latencies.items())]


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks, as PostgreSQL's percentile_cont."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def failure_groups(session: Session, *, tenant: str | None = None) -> list[FailureGroup]:
    """Failed jobs grouped by model and error type, the largest group first."""
    stmt = select(Job.model, Job.error_type, func.count(), func.max(Job.finished_at)).where(Job.status == JobStatus.FAILED)
    if tenant is not None:
        stmt = stmt.where(Job.tenant == tenant)
    rows = session.execute(stmt.group_by(Job.model, Job.error_type)).tuples()
    groups = [FailureGroup(model, error or "", n, last) for model, error, n, last in rows]
    return sorted(groups, key=lambda g: (-g.count, g.model, g.error_type))


WINDOW = timedelta(hours=1)

__all__ = ["WINDOW", "FailureGroup", "MinuteStats", "failure_groups", "finished_counts", "minute_stats", "oldest_queued",
           "unfinished_counts"]
