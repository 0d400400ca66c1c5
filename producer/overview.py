"""What an operator sees at a glance, read through the Client: per-model queues and counts, minute
series of throughput and latency, failures grouped by error. The console and /metrics read these."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from db import overview
from db.models import JobStatus, utcnow

if TYPE_CHECKING:
    from producer.client import Client

SERIES_MINUTES = 30


class QueueStats(BaseModel):
    """A model's queue: messages waiting on its Redis list, and how long its oldest queued job has waited."""

    model: str
    depth: int
    oldest_queued_s: float | None


class ModelOverview(BaseModel):
    model: str
    queue_depth: int
    oldest_queued_s: float | None
    queued: int
    running: int
    succeeded_last_hour: int
    failed_last_hour: int


class MinutePoint(BaseModel):
    minute: datetime
    model: str
    jobs_per_s: float
    p50_s: float
    p95_s: float


class FailureGroupView(BaseModel):
    model: str
    error_type: str
    count: int
    last_failed_at: datetime | None


class Overview(BaseModel):
    at: datetime
    models: list[ModelOverview]
    series: list[MinutePoint]


def queue_stats(client: Client) -> list[QueueStats]:
    """Every registry model's queue depth and oldest queued age (the age counts every tenant: a queue is shared)."""
    now = utcnow()
    names = client.registry.names()
    with client.sessions() as session:
        oldest = overview.oldest_queued(session, models=names)
    return [QueueStats(model=name, depth=client.publisher.queue_depth(name), oldest_queued_s=_age_s(now, oldest[name]))
            for name in names]


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


def model_overview(client: Client) -> Overview:
    """Per model: queue, queued and running now, succeeded and failed over the last hour; and the
    last SERIES_MINUTES minutes of throughput and latency."""
    now = utcnow()
    tenant = client.visible_tenant
    with client.sessions() as session:
        unfinished = overview.unfinished_counts(session, tenant=tenant)
        finished = overview.finished_counts(session, since=now - overview.WINDOW, tenant=tenant)
        minutes = overview.minute_stats(session, since=now - overview.WINDOW / 60 * SERIES_MINUTES, tenant=tenant)
    queues = {q.model: q for q in queue_stats(client)}
    names = sorted(set(queues) | {m for m, _ in unfinished} | {m for m, _ in finished})
    models = [ModelOverview(
        model=name,
        queue_depth=queues[name].depth if name in queues else 0,
        oldest_queued_s=queues[name].oldest_queued_s if name in queues else None,
        queued=unfinished.get((name, JobStatus.QUEUED), 0), running=unfinished.get((name, JobStatus.RUNNING), 0),
        succeeded_last_hour=finished.get((name, JobStatus.SUCCEEDED), 0),
        failed_last_hour=finished.get((name, JobStatus.FAILED), 0),
    ) for name in names]
    series = [MinutePoint(minute=m.minute, model=m.model, jobs_per_s=m.finished / 60, p50_s=m.p50_s, p95_s=m.p95_s)
              for m in minutes]
    return Overview(at=now, models=models, series=series)


def failure_groups(client: Client) -> list[FailureGroupView]:
    with client.sessions() as session:
        groups = overview.failure_groups(session, tenant=client.visible_tenant)
    return [FailureGroupView(model=g.model, error_type=g.error_type, count=g.count, last_failed_at=g.last_failed_at)
            for g in groups]


__all__ = ["SERIES_MINUTES", "FailureGroupView", "MinutePoint", "ModelOverview", "Overview", "QueueStats",
           "failure_groups", "model_overview", "queue_stats"]
