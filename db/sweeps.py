"""The sweeper's queries over the jobs table: jobs whose message was probably lost, queued jobs past
their deadline, and queued jobs no registry knows.

Like db.store, functions are keyword-only after the session and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import String, and_, case, func, literal, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db import webhooks
from db.engine import is_postgres
from db.models import Job, JobStatus, UTCDateTime, utcnow
from db.store import EXPIRED_ERROR, EXPIRED_MESSAGE

UNKNOWN_MODEL_ERROR = "UnknownModel"
# The longest wait between re-publishes of a queued job, in units of the first: five doublings.
DEFAULT_BACKOFF_CAP = 32


def jobs_to_republish(
    session: Session,
    *,
    stale_after: timedelta,
    limit: int,
    waiting_since: Mapping[str, datetime | None] | None = None,
    max_backoff: timedelta | None = None,
) -> list[tuple[uuid.UUID, str, int]]:
    """Jobs whose message was probably lost: queued and not published for a backoff period, or
    running with an expired lease. Marks them published now.

    The backoff starts at `stale_after` and doubles with each re-publish, up to `max_backoff`
    (default DEFAULT_BACKOFF_CAP x `stale_after`). It is part of the query, so `limit` counts only jobs that are due:
    any number of jobs in backoff cannot hide a lost one. A queued job never published (a row
    written around the producer) has no message anywhere and is due at once.

    `waiting_since` covers the models whose queue still holds messages: when the message read next
    there was published. A queue is first in, first out, so a queued job published before that has
    no message waiting (it was lost: dropped with a dead worker, say) and is picked; later ones are
    left alone, since re-publishing a backlog would only add load. None for a model: its queue
    cannot be peeked at, and all its queued jobs are left alone.

    On PostgreSQL rows are locked with SKIP LOCKED, so sweepers in several workers share the work
    instead of publishing the same job twice.
    """
    now = utcnow()
    stmt = (
        select(Job.id, Job.model, Job.priority)
        .where(
            or_(
                and_(
                    Job.status == JobStatus.QUEUED,
                    or_(
                        Job.published_at.is_(None),
                        and_(
                            Job.published_at < _republish_due_before(
                                now, stale_after, stale_after * DEFAULT_BACKOFF_CAP if max_backoff is None else max_backoff),
                            _no_message_waiting(waiting_since or {}),
                        ),
                    ),
                ),
                and_(Job.status == JobStatus.RUNNING, Job.lease_until < now),
            )
        )
        .order_by(Job.priority.asc(), Job.created_at.asc())
        .limit(limit)
    )
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    picked = [(job_id, model, priority) for job_id, model, priority in session.execute(stmt).tuples()]
    if picked:
        session.execute(
            update(Job).where(Job.id.in_([p[0] for p in picked])).values(published_at=now, publish_count=Job.publish_count + 1),
            execution_options={"synchronize_session": False},
        )
    return picked


def _republish_due_before(now: datetime, base: timedelta, cap: timedelta) -> ColumnElement[datetime]:
    """The publish time before which a queued job is due again: now - min(base x 2 ** (publish_count - 1), cap).

    One bound timestamp per doubling step, chosen by publish_count: both backends compare them as
    they compare stored timestamps (SQLite has no interval arithmetic on its text timestamps).
    """
    waits = [min(base, cap)]
    while waits[-1] < cap and base > timedelta(0) and len(waits) < _MAX_BACKOFF_STEPS:
        waits.append(min(waits[-1] * 2, cap))
    steps = [(Job.publish_count <= count, _at(now - wait)) for count, wait in enumerate(waits[:-1], start=1)]
    return case(*steps, else_=_at(now - waits[-1])) if steps else _at(now - waits[-1])


# Doublings before the backoff reaches its cap: 2 ** 40 x even 1 ms is 35 years.
_MAX_BACKOFF_STEPS = 40


def _at(moment: datetime) -> ColumnElement[datetime]:
    return literal(moment, UTCDateTime())


def _no_message_waiting(waiting_since: Mapping[str, datetime | None]) -> ColumnElement[bool]:
    known = [and_(Job.model == model, Job.published_at < since) for model, since in waiting_since.items() if since]
    return or_(Job.model.not_in(list(waiting_since)), *known)


def earliest_published(session: Session, *, ids: Sequence[uuid.UUID]) -> datetime | None:
    """When the first of these jobs was (last) published; None if none of them has a row.

    A job with no publish time counts from its creation: its message cannot be older than that.
    """
    if not ids:
        return None
    first = func.min(func.coalesce(Job.published_at, Job.created_at))
    return session.execute(select(first).where(Job.id.in_(list(ids)))).scalar_one()


def expire_overdue_jobs(session: Session) -> int:
    """End queued jobs whose deadline passed (they may never get a message to be claimed by), with
    their job.expired events."""
    now = utcnow()
    expired = session.scalars(
        update(Job)
        .where(Job.status == JobStatus.QUEUED, Job.expires_at.is_not(None), Job.expires_at < now)
        .values(
            status=JobStatus.EXPIRED,
            finished_at=now,
            error_type=EXPIRED_ERROR,
            error_message=EXPIRED_MESSAGE,
        )
        .returning(Job.id),
        execution_options={"synchronize_session": False},
    ).all()
    webhooks.queue_job_events(session, job_ids=expired)
    return len(expired)


def fail_unknown_model_jobs(session: Session, *, known_models: Collection[str], created_before: datetime) -> int:
    """End queued jobs created before `created_before` whose model is none of `known_models`: no
    worker can ever claim them. Returns how many."""
    if not known_models:  # an empty registry is a misconfiguration, not a reason to fail every job
        return 0
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.QUEUED, Job.model.not_in(list(known_models)), Job.created_at < created_before)
        .values(
            status=JobStatus.FAILED,
            finished_at=utcnow(),
            error_type=UNKNOWN_MODEL_ERROR,
            error_message=literal("no model named '", String()) + Job.model
            + literal("' in this deployment's registry (TEXTQ_MODELS_FILE)", String()),
        ),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
