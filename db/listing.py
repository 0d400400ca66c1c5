"""Listing jobs newest first: keyset pages by (created_at, id), their filters, and a deadline per
query (a rare filter can scan many rows). Like db.store, functions never commit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, Uuid, bindparam, func, select, tuple_
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from db.engine import is_postgres
from db.models import Job, JobStatus, UTCDateTime, of_tenant

_QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a statement_timeout


@dataclass(frozen=True, slots=True)
class PagePosition:
    """Where a newest-first page starts: after the row (created_at, id), exclusive."""

    created_at: datetime
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs a page lists (every field None: all); the console's and the API's filters."""

    status: JobStatus | None = None
    model: str | None = None
    tenant: str | None = None
    before: datetime | None = None
    since: datetime | None = None
    error_type: str | None = None


def newest_first(matching: JobFilter, *, after: PagePosition | None = None) -> Select[Job]:
    """Jobs matching the filter newest first, by (created_at, id), from just after `after`."""
    stmt = select(Job).where(*of_tenant(Job.tenant, matching.tenant)).order_by(Job.created_at.desc(), Job.id.desc())
    if matching.status is not None:
        stmt = stmt.where(Job.status == matching.status)
    if matching.model is not None:
        stmt = stmt.where(Job.model == matching.model)
    if matching.before is not None:
        stmt = stmt.where(Job.created_at < matching.before)
    if matching.since is not None:
        stmt = stmt.where(Job.created_at >= matching.since)
    if matching.error_type is not None:
        stmt = stmt.where(Job.error_type == matching.error_type)
    if after is not None:
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(
            bindparam("after_created_at", after.created_at, type_=UTCDateTime()),
            bindparam("after_id", after.id, type_=Uuid()),
        ))
    return stmt


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    model: str | None = None,
    tenant: str | None = None,
    limit: int = 50,
    before: datetime | None = None,
    after: PagePosition | None = None,
    time_limit_s: float | None = None,
    since: datetime | None = None,
    error_type: str | None = None,
) -> list[Job]:
    """Up to `limit` jobs newest first, by (created_at, id); the next page starts after the last row.

    Keyset paging: a page costs one index range read however deep it is. With `time_limit_s`, a
    query that runs longer (a rare filter scanning many rows) raises TimeoutError. A text search
    is db/search.py's.
    """
    matching = JobFilter(status=status, model=model, tenant=tenant, before=before, since=since, error_type=error_type)
    stmt = newest_first(matching, after=after).limit(limit)
    with time_limit(session, time_limit_s):
        return list(session.scalars(stmt).all())


@contextmanager
def time_limit(session: Session, seconds: float | None) -> Iterator[None]:
    """Run the session's next statements under a deadline (None: none): PostgreSQL's statement_timeout,
    SQLite's progress handler."""
    if seconds is None:
        yield
        return
    try:
        if is_postgres(session):
            # SET LOCAL needs a transaction: this session's connection leaves autocommit until it returns to the pool.
            session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            session.execute(select(func.set_config("statement_timeout", str(max(1, round(seconds * 1000))), True)))
            yield
            return
        raw = session.connection().connection.driver_connection
        assert raw is not None
        deadline = time.monotonic() + seconds
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == _QUERY_CANCELED or "interrupted" in str(exc.orig):
            raise TimeoutError(f"the query ran longer than {seconds:g} s") from None
        raise
