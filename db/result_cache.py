"""The store API of the result cache: every read and write of `result_cache`.

Like db/store.py: keyword-only after the session, and no commits (the caller owns the transaction).
What a key covers, and when a model uses the cache at all, is the worker's business (worker/result_cache.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, Uuid, bindparam, delete, func, select, text
from sqlalchemy.orm import Session

from db.engine import is_postgres
from db.models import CachedResult, JobStatus, UTCDateTime, utcnow
from db.store import JOBS

CACHE = cast(Table, CachedResult.__table__)


@dataclass(frozen=True, slots=True)
class CacheHit:
    key: str
    source_job_id: uuid.UUID
    output: Any
    model_version: str | None


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A job that just computed its output, to be remembered under `key`."""

    key: str
    job_id: uuid.UUID


def cached_results(session: Session, *, keys: Collection[str], created_after: datetime) -> dict[str, CacheHit]:
    """The entries among `keys` created after `created_after` (older ones are past the cache's age)."""
    if not keys:
        return {}
    c = CACHE.c
    rows = session.execute(
        select(c.key, c.source_job_id, c.output, c.model_version)
        .where(c.key.in_(bindparam("keys", expanding=True)), c.created_at > created_after),
        {"keys": sorted(keys)},
    ).tuples()
    return {key: CacheHit(key, source, output, version) for key, source, output, version in rows}


def remember_results(session: Session, *, model: str, entries: Sequence[NewEntry], stale_before: datetime) -> None:
    """Add an entry per job that succeeded (in this transaction: call it after finish_jobs), its output
    copied from the job's row. A key already present is left as it is, whoever wrote it, unless it
    was created before `stale_before` (past the cache's age: then the new job's output replaces it).

    Keys go in sorted order, so two transactions adding the same keys lock them in the same order
    (PostgreSQL: the second waits for the first, then skips them; no deadlock)."""
    if not entries:
        return
    now = utcnow()
    ordered = sorted(entries, key=lambda e: e.key)
    if is_postgres(session):
        document = json.dumps([{"key": e.key, "id": str(e.job_id)} for e in ordered])
        session.execute(_REMEMBER_FROM_JSON, {"entries": document, "model": model, "now": now, "stale": stale_before})
        return
    session.execute(_REMEMBER_EACH, [{"key": e.key, "job_id": e.job_id, "model": model, "now": now, "stale": stale_before}
                                     for e in ordered])


# Only a job still succeeded and computed (not itself a hit) becomes an entry: a result the writer
# could not record under its claim (the job was cancelled meanwhile) is never reused.
_SOURCE = f"j.status = '{JobStatus.SUCCEEDED.value}' AND j.cached_from IS NULL"
_REPLACE_STALE = f"""ON CONFLICT (key) DO UPDATE SET model_version = excluded.model_version,
        source_job_id = excluded.source_job_id, output = excluded.output, created_at = excluded.created_at
    WHERE {CACHE.name}.created_at < :stale"""

_REMEMBER_FROM_JSON = text(
    f"""INSERT INTO {CACHE.name} (key, model, model_version, source_job_id, output, created_at)
    SELECT e.key, :model, j.model_version, j.id, j.output, :now
    FROM jsonb_to_recordset(CAST(:entries AS jsonb)) AS e(key text, id uuid)
    JOIN {JOBS.name} AS j ON j.id = e.id
    WHERE {_SOURCE}
    ORDER BY e.key
    {_REPLACE_STALE}"""
).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("stale", type_=UTCDateTime()))

# SQLite: executemany, in-process (no round trips); typed binds store the id and time as the columns do.
_REMEMBER_EACH = text(
    f"""INSERT INTO {CACHE.name} (key, model, model_version, source_job_id, output, created_at)
    SELECT :key, :model, j.model_version, j.id, j.output, :now
    FROM {JOBS.name} AS j
    WHERE j.id = :job_id AND {_SOURCE}
    {_REPLACE_STALE}"""
).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("stale", type_=UTCDateTime()),
             bindparam("job_id", type_=Uuid()))


def prune_results(session: Session, *, model: str, created_before: datetime, keep: int) -> int:
    """Delete `model`'s entries created before `created_before`, then all but its newest `keep`; how many went."""
    c = CACHE.c
    deleted = session.execute(delete(CACHE).where(c.model == model, c.created_at < created_before)).rowcount  # type: ignore[attr-defined]
    boundary = (select(c.created_at).where(c.model == model).order_by(c.created_at.desc())
                .limit(1).offset(keep).scalar_subquery())
    deleted += session.execute(delete(CACHE).where(c.model == model, c.created_at <= boundary)).rowcount  # type: ignore[attr-defined]
    return int(deleted)


def count_results(session: Session, *, model: str | None = None) -> int:
    """Entries in the cache (of `model`, or of every model)."""
    stmt = select(func.count()).select_from(CACHE)
    if model is not None:
        stmt = stmt.where(CACHE.c.model == model)
    return int(session.execute(stmt).scalar_one())


__all__ = ["CacheHit", "NewEntry", "cached_results", "count_results", "prune_results", "remember_results"]
