"""The workers table: heartbeats of running workers, the leases they renew, and what becomes of a
dead worker's jobs.

Functions are keyword-only after the session and never commit, as in db.store: the caller owns
the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.engine import is_postgres
from db.models import Job, JobStatus, Worker, utcnow

WORKERS = cast(Table, Worker.__table__)


class WorkerState(StrEnum):
    STARTING = "starting"  # loading its models
    RUNNING = "running"
    DRAINING = "draining"  # stopping: finishing the jobs in hand


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """What a worker says of itself in every heartbeat, fixed for the life of the process."""

    name: str
    host: str
    pid: int
    models: tuple[str, ...]
    started_at: datetime


def record_heartbeat(session: Session, *, worker: WorkerIdentity, jobs_in_hand: int, state: WorkerState) -> None:
    """Write the worker's row, seen now (inserted on its first beat, and again if a sweeper
    removed it while the worker was too slow to beat)."""
    values = {
        "name": worker.name, "host": worker.host, "pid": worker.pid, "models": list(worker.models),
        "started_at": worker.started_at, "last_seen": utcnow(), "jobs_in_hand": jobs_in_hand, "state": state.value,
    }
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    statement = insert(WORKERS).values(values)
    session.execute(statement.on_conflict_do_update(
        index_elements=[WORKERS.c.name],
        set_={column: statement.excluded[column] for column in ("last_seen", "jobs_in_hand", "state", "models")},
    ))


def renew_leases(session: Session, *, worker: str, job_ids: Collection[uuid.UUID], lease: timedelta) -> int:
    """Extend to `lease` from now the lease of each of `job_ids` that `worker` is running (the jobs it
    holds in memory); returns how many. A job another worker took over is left alone."""
    if not job_ids:
        return 0
    result = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(lease_until=utcnow() + lease),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def list_workers(session: Session) -> list[Worker]:
    return list(session.scalars(select(Worker).order_by(Worker.name)).all())


def dead_workers(session: Session, *, silent_for: timedelta, lock: bool = False) -> list[Worker]:
    """Workers whose last heartbeat is older than `silent_for`. With `lock` (PostgreSQL), their
    rows are locked with SKIP LOCKED, so that one sweeper at a time handles each."""
    statement = select(Worker).where(Worker.last_seen < utcnow() - silent_for).order_by(Worker.name)
    if lock and is_postgres(session):
        statement = statement.with_for_update(skip_locked=True)
    return list(session.scalars(statement).all())


def remove_worker(session: Session, *, name: str, silent_for: timedelta | None = None) -> bool:
    """Delete the worker's row (with `silent_for`: only while it is still that silent); returns
    whether it was there. The sweeper that removes a dead worker is the one that handles its jobs."""
    statement = delete(Worker).where(Worker.name == name)
    if silent_for is not None:
        statement = statement.where(Worker.last_seen < utcnow() - silent_for)
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return bool(result.rowcount)  # type: ignore[attr-defined]


def reclaim_dead_workers(
    session: Session, *, silent_for: timedelta, waiting_since: Mapping[str, datetime | None], limit: int
) -> tuple[list[str], list[tuple[uuid.UUID, str, int]]]:
    """Remove the workers silent for `silent_for` and pick their jobs to re-publish now.

    Picked: the jobs they were running (put back to queued: their claims die with them, and their
    attempts count, so a job that killed its worker is retried alone), and the queued jobs of the
    models they served that have no message waiting, which they probably held in memory
    (`waiting_since` as for db.sweeps.jobs_to_republish: the publish time of the message each
    model's queue hands out next; a model absent has an empty queue, None cannot be peeked at and
    is left to the regular sweep). Picked jobs are marked published now. Returns the names of the
    removed workers and the picked (id, model, priority) jobs.
    """
    removed = [w for w in dead_workers(session, silent_for=silent_for, lock=True)
               if remove_worker(session, name=w.name, silent_for=silent_for)]
    if not removed:
        return [], []
    names = [w.name for w in removed]
    models = sorted({model for w in removed for model in w.models})
    picked = _republish_now(
        session, and_(Job.status == JobStatus.RUNNING, Job.worker.in_(names)), limit=limit,
        status=JobStatus.QUEUED.value, worker=None, lease_until=None,
    )
    no_message = _no_message_waiting(models, waiting_since)
    if no_message is not None and len(picked) < limit:
        picked += _republish_now(session, and_(Job.status == JobStatus.QUEUED, no_message), limit=limit - len(picked))
    return names, picked


def _no_message_waiting(models: Sequence[str], waiting_since: Mapping[str, datetime | None]) -> ColumnElement[bool] | None:
    """Queued jobs of `models` published before the message their queue hands out next (a queue
    is first in, first out), or None if no model's queue can tell."""
    conditions: list[ColumnElement[bool]] = []
    for model in models:
        if model not in waiting_since:
            conditions.append(Job.model == model)
        elif (since := waiting_since[model]) is not None:
            conditions.append(and_(Job.model == model, Job.published_at < since))
    return or_(*conditions) if conditions else None


def _republish_now(
    session: Session, where: ColumnElement[bool], *, limit: int, **values: Any
) -> list[tuple[uuid.UUID, str, int]]:
    """Mark up to `limit` jobs matching `where` published now (with `values` set too); returns
    them. PostgreSQL skips rows another sweeper holds, so no job is published twice at once."""
    chosen = select(Job.id).where(where).order_by(Job.priority.asc(), Job.created_at.asc()).limit(limit)
    if is_postgres(session):
        chosen = chosen.with_for_update(skip_locked=True)
    result = session.execute(
        update(Job)
        .where(Job.id.in_(chosen.scalar_subquery()))
        .values(published_at=utcnow(), publish_count=Job.publish_count + 1, **values)
        .returning(Job.id, Job.model, Job.priority),
        execution_options={"synchronize_session": False},
    )
    return [(job_id, model, priority) for job_id, model, priority in result.tuples()]


__all__ = [
    "WorkerIdentity",
    "WorkerState",
    "dead_workers",
    "list_workers",
    "reclaim_dead_workers",
    "record_heartbeat",
    "remove_worker",
    "renew_leases",
]
