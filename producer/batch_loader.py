"""The batch loader: validates a batch's whole input file, then enqueues its lines as jobs, a chunk
of lines per transaction, holding the batch's lease.

Two passes over the file, so that memory stays bounded: the first validates every line (a file
with bad lines is refused whole, unless the batch skips them); the second validates each line again
as it enqueues it. Job ids derive from the batch id and the line number, and the loader records the
last line it enqueued in the same transaction: a loader that dies is resumed (by whoever takes the
lease next) after that line, and a line enqueued twice is one job.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func
from sqlalchemy.orm import Session, sessionmaker

from db import batches as store
from db import webhooks
from db.models import Batch, BatchStatus, JobStatus, utcnow
from db.store import EXPIRED_ERROR, EXPIRED_MESSAGE
from producer.batch_files import file_lines
from producer.batch_lines import BadLine, CustomIdSeen, ValidLine, check_line
from producer.limits import Limits
from producer.registry import Registry

if TYPE_CHECKING:
    from producer.broker import Publisher

log = logging.getLogger(__name__)

LINES_PER_TRANSACTION = 2000
# Planner statistics are refreshed once this many lines are enqueued, then each time the count doubles
# (10k, 20k, ..., 640k: 7 times for a million lines), so that they never lag far behind the table.
ANALYZE_FROM_LINES = 10_000
# The errors a failed batch reports (all bad lines are counted).
MAX_REPORTED_ERRORS = 100
INVALID_LINE_ERROR = "InvalidBatchLine"


@dataclass(frozen=True, slots=True)
class LoaderContext:
    """What loading needs: transactional sessions, the registry and limits lines are checked
    against, the publisher of the enqueued jobs, and the lease length."""

    sessions: sessionmaker[Session]
    registry: Registry
    limits: Limits
    publisher: Publisher
    lease: timedelta


@dataclass(slots=True)
class _Scan:
    lines: int = 0  # lines that are requests (blank ones are not)
    bad: int = 0
    reported: list[BadLine] = field(default_factory=list)
    duplicates: dict[int, int] = field(default_factory=dict)  # a repeated custom_id's line -> its first line


def job_id_of(batch_id: str, line: int) -> uuid.UUID:
    """The id of a batch line's job: the same for every loader that enqueues the line."""
    return uuid.uuid5(uuid.UUID(batch_id.removeprefix("batch_")), str(line))


def load_batch(context: LoaderContext, batch_id: str, owner: str) -> None:
    """Validate and enqueue the batch's input file; `owner` must hold the batch's lease."""
    with context.sessions() as session:
        batch = store.get_batch(session, batch_id=batch_id)
        source = store.get_file(session, file_id=batch.input_file_id) if batch is not None else None
    if batch is None:
        return
    if source is None:
        _fail(context, batch_id, owner, total=0, errors=[{"code": "file_not_found", "line": None, "param": "input_file_id",
                                                          "message": f"input file {batch.input_file_id} was deleted"}])
        return
    scan = _scan(context, batch, owner, source.lines)
    if scan is None:
        return
    if scan.bad and not batch.skip_invalid_lines:
        log.info("batch %s refused: %d of %d lines are invalid", batch_id, scan.bad, scan.lines)
        _fail(context, batch_id, owner, total=scan.lines, errors=[b.as_error() for b in scan.reported])
        return
    now = utcnow()
    with context.sessions.begin() as session:
        started = store.renew_lease(
            session, batch_id=batch_id, owner=owner, until=now + context.lease, total=scan.lines,
            status=case((Batch.status == BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS.value), else_=Batch.status),
            in_progress_at=func.coalesce(Batch.in_progress_at, now),
        )
    if started is not None:
        _enqueue_lines(context, started, owner, scan.duplicates)


def _scan(context: LoaderContext, batch: Batch, owner: str, line_count: int) -> _Scan | None:
    """Pass 1: check every line; None if the lease was lost meanwhile."""
    scan = _Scan()
    seen = CustomIdSeen(line_count)
    maybe_repeated: list[tuple[int, str]] = []
    for number, raw in file_lines(context.sessions, batch.input_file_id):
        if number % (LINES_PER_TRANSACTION * 10) == 0 and not _renew(context, batch.id, owner):
            return None
        result = check_line(number, raw, registry=context.registry, limits=context.limits)
        if result is None:
            continue
        scan.lines += 1
        if isinstance(result, BadLine):
            _count_bad(scan, result)
        if result.custom_id is not None and _names_itself(result) and seen.add(result.custom_id):
            maybe_repeated.append((number, result.custom_id))
    if maybe_repeated:
        scan.duplicates = _confirm_repeats(context, batch.input_file_id, maybe_repeated)
        for number, first in sorted(scan.duplicates.items()):
            _count_bad(scan, _repeat(number, first, _custom_id_of(maybe_repeated, number)))
        scan.reported.sort(key=lambda b: b.number)
        del scan.reported[MAX_REPORTED_ERRORS:]
    return scan


def _names_itself(result: ValidLine | BadLine) -> bool:
    """Whether the line's custom_id was read whole (and so takes part in the uniqueness check)."""
    return isinstance(result, ValidLine) or result.code not in ("invalid_json", "missing_custom_id", "invalid_custom_id")


def _count_bad(scan: _Scan, bad: BadLine) -> None:
    scan.bad += 1
    if len(scan.reported) < MAX_REPORTED_ERRORS or bad.code == "duplicate_custom_id":
        scan.reported.append(bad)


def _repeat(number: int, first: int, custom_id: str) -> BadLine:
    return BadLine(number, custom_id, "duplicate_custom_id", "custom_id",
                   f"custom_id is used by line {first} already; custom_ids must be unique in a file")


def _custom_id_of(lines: list[tuple[int, str]], number: int) -> str:
    return next(custom_id for n, custom_id in lines if n == number)


def _confirm_repeats(context: LoaderContext, file_id: str, maybe: list[tuple[int, str]]) -> dict[int, int]:
    """Which of the lines whose custom_id digest was seen before really repeat an earlier id (a rare
    digest collision does not), each with the line that used the id first."""
    digests = {CustomIdSeen.digest(custom_id) for _, custom_id in maybe}
    first_use: dict[str, int] = {}
    for number, raw in file_lines(context.sessions, file_id):
        custom_id = _raw_custom_id(raw)
        if custom_id is not None and CustomIdSeen.digest(custom_id) in digests:
            first_use.setdefault(custom_id, number)
    return {number: first_use[custom_id] for number, custom_id in maybe if first_use[custom_id] != number}


def _raw_custom_id(raw: bytes) -> str | None:
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    custom_id = line.get("custom_id") if isinstance(line, dict) else None
    return custom_id if isinstance(custom_id, str) else None


def _enqueue_lines(context: LoaderContext, batch: Batch, owner: str, duplicates: dict[int, int]) -> None:
    """Pass 2: enqueue the lines after the last one enqueued, a transaction per chunk."""
    pending: list[ValidLine | BadLine] = []
    last = batch.loaded_lines
    analyze_at = ANALYZE_FROM_LINES
    for number, raw in file_lines(context.sessions, batch.input_file_id, start_line=batch.loaded_lines + 1):
        last = number
        result = check_line(number, raw, registry=context.registry, limits=context.limits)
        if result is None:
            continue
        if number in duplicates:
            result = _repeat(number, duplicates[number], result.custom_id or "")
        pending.append(result)
        if len(pending) >= LINES_PER_TRANSACTION:
            if not _enqueue(context, batch, owner, pending, last):
                return
            pending = []
            if last >= analyze_at:
                with context.sessions.begin() as session:
                    store.refresh_job_statistics(session)
                analyze_at = 2 * last
    if _enqueue(context, batch, owner, pending, last):
        with context.sessions.begin() as session:
            store.end_batch(session, batch_id=batch.id, owner=owner, loaded=True)
        log.info("batch %s loaded: %d lines", batch.id, last)


def _enqueue(context: LoaderContext, batch: Batch, owner: str, lines: list[ValidLine | BadLine], upto: int) -> bool:
    """Insert the lines' jobs and record `upto` as loaded, in one transaction; then publish the
    queued ones. False if the lease was lost (another loader goes on)."""
    now = utcnow()
    with context.sessions.begin() as session:
        # First: it locks the batch row, so a cancel commits before (seen here) or after (sees these rows).
        current = store.renew_lease(session, batch_id=batch.id, owner=owner, until=now + context.lease, loaded_lines=upto)
        if current is None:
            log.warning("batch %s: lost the loader's lease; another process goes on", batch.id)
            return False
        status = (JobStatus.CANCELLED if current.cancelling_at is not None
                  else JobStatus.EXPIRED if current.expires_at <= now else JobStatus.QUEUED)
        rows = [_job_row(current, line, status, now) for line in lines]
        store.insert_batch_jobs(session, rows=rows)
        # Lines that end as they are inserted (a skipped bad line, a batch cancelled or expired) announce it now.
        webhooks.queue_job_events(session, job_ids=[row["id"] for row in rows if row["status"] != JobStatus.QUEUED.value])
    queued = [(row["id"], row["model"], row["priority"]) for row in rows if row["status"] == JobStatus.QUEUED.value]
    try:
        context.publisher.publish_jobs(queued)
    except Exception as exc:  # the rows are the ledger: the sweeper publishes them later
        log.warning("batch %s: could not publish %d jobs (%s); the sweeper will", batch.id, len(queued), exc)
    return True


def _job_row(batch: Batch, line: ValidLine | BadLine, status: JobStatus, now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": job_id_of(batch.id, line.number), "batch_id": batch.id, "batch_line": line.number, "tenant": batch.tenant,
        "custom_id": line.custom_id, "priority": batch.priority, "expires_at": batch.expires_at, "created_at": now,
        "attempts": 0, "published_at": now, "publish_count": 1, "idempotency_key": None, "worker": None,
        "started_at": None, "lease_until": None, "retry_at": None, "output": None,
        "status": status.value, "error_type": None, "error_message": None,
        "finished_at": None if status is JobStatus.QUEUED else now,
    }
    if isinstance(line, BadLine):  # a skipped bad line fails alone, so that it is in the error file
        row.update(model="", task="", input={}, status=JobStatus.FAILED.value, error_type=INVALID_LINE_ERROR,
                   error_message=line.message, finished_at=now)
        return row
    row.update(model=line.model, task=line.task, input=line.input)
    if status is JobStatus.EXPIRED:
        row.update(error_type=EXPIRED_ERROR, error_message=EXPIRED_MESSAGE)
    return row


def _renew(context: LoaderContext, batch_id: str, owner: str) -> bool:
    with context.sessions.begin() as session:
        return store.renew_lease(session, batch_id=batch_id, owner=owner, until=utcnow() + context.lease) is not None


def _fail(context: LoaderContext, batch_id: str, owner: str, *, total: int, errors: list[dict[str, Any]]) -> None:
    now = utcnow()
    with context.sessions.begin() as session:
        if store.end_batch(session, batch_id=batch_id, owner=owner, status=BatchStatus.FAILED.value, failed_at=now,
                           total=total, loaded=True, errors={"object": "list", "data": errors}):
            webhooks.queue_batch_event(session, batch_id=batch_id)


__all__ = ["INVALID_LINE_ERROR", "LINES_PER_TRANSACTION", "LoaderContext", "job_id_of", "load_batch"]
