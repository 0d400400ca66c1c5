"""The batch finalizer: once every job of a loaded batch is finished, writes its output and error
files and its final status and counts, in one transaction.

Safe from several processes at once: `start_finalizing` is a compare-and-set that one caller wins
(or takes over after the winner's lease ran out), and the final write happens only under that
lease; a finalizer that dies leaves nothing behind (its transaction rolls back).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import batches as store
from db import webhooks
from db.models import BatchStatus, Job, JobStatus, StoredFile, utcnow
from producer.batch_files import ChunkWriter
from producer.batch_loader import INVALID_LINE_ERROR
from producer.contract import JobView

log = logging.getLogger(__name__)

JOBS_PER_PAGE = 1000
OUTPUT_PURPOSE = "batch_output"
_ERROR_CODES = {JobStatus.FAILED: "job_failed", JobStatus.EXPIRED: "batch_expired", JobStatus.CANCELLED: "batch_cancelled"}


class _LeaseLost(Exception):
    """Another finalizer took over: roll this one's files back."""


def finalize_batch(sessions: sessionmaker[Session], batch_id: str, owner: str, *, lease: timedelta) -> bool:
    """Finalize the batch if it is due and no one else is at it; True if this call did."""
    with sessions.begin() as session:
        if not store.start_finalizing(session, batch_id=batch_id, owner=owner, until=utcnow() + lease):
            return False
    try:
        with sessions.begin() as session:
            _write_results(session, batch_id, owner)
    except _LeaseLost:
        log.warning("batch %s: another finalizer took over", batch_id)
        return False
    return True


def _write_results(session: Session, batch_id: str, owner: str) -> None:
    batch = store.get_batch(session, batch_id=batch_id)
    assert batch is not None  # start_finalizing found it
    # The batch's tenant owns its results: they hold its jobs' outputs.
    output = ChunkWriter(session, filename=f"{batch_id}_output.jsonl", purpose=OUTPUT_PURPOSE, tenant=batch.tenant)
    errors = ChunkWriter(session, filename=f"{batch_id}_error.jsonl", purpose=OUTPUT_PURPOSE, tenant=batch.tenant)
    counts: Counter[str] = Counter()
    after = 0
    while page := store.batch_jobs_page(session, batch_id=batch_id, after_line=after, limit=JOBS_PER_PAGE):
        for job in page:
            counts[job.status] += 1
            (output if job.status == JobStatus.SUCCEEDED else errors).write(result_line(job))
            session.expunge(job)  # memory stays one page, whatever the batch's size
        after = page[-1].batch_line or after
    now = utcnow()
    status = (BatchStatus.CANCELLED if batch.cancelling_at is not None
              else BatchStatus.EXPIRED if counts[JobStatus.EXPIRED] else BatchStatus.COMPLETED)
    succeeded = counts[JobStatus.SUCCEEDED]
    ended = store.end_batch(
        session, batch_id=batch_id, owner=owner, status=status.value, **{f"{status.value}_at": now},
        completed=succeeded, failed=sum(counts.values()) - succeeded,
        output_file_id=_kept(session, output.close()), error_file_id=_kept(session, errors.close()),
    )
    if not ended:
        raise _LeaseLost(batch_id)
    webhooks.queue_batch_event(session, batch_id=batch_id)  # with the batch's end: never lost
    log.info("batch %s %s: %d succeeded, %d not", batch_id, status.value, succeeded, sum(counts.values()) - succeeded)


def _kept(session: Session, file: StoredFile) -> str | None:
    """The file's id, or None (and no file) if nothing was written to it, as OpenAI does."""
    if file.bytes:
        return file.id
    session.expunge(file)
    store.delete_file(session, file_id=file.id)
    return None


def result_line(job: Job) -> bytes:
    """A job's line in the output or error file, in the OpenAI batch output shape."""
    request_id = str(job.id)
    error: dict[str, Any] | None = None
    if job.error_type == INVALID_LINE_ERROR:
        response: dict[str, Any] = {"status_code": 422, "request_id": request_id, "body": {"detail": job.error_message}}
        error = {"code": "invalid_request", "message": job.error_message}
    else:
        response = {"status_code": 200, "request_id": request_id, "body": JobView.model_validate(job).model_dump(mode="json")}
        if job.status != JobStatus.SUCCEEDED:
            error = {"code": _ERROR_CODES.get(JobStatus(job.status), "job_failed"),
                     "message": job.error_message or f"the job was {job.status}"}
    line = {"id": f"batch_req_{job.id.hex}", "custom_id": job.custom_id, "response": response, "error": error}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


__all__ = ["OUTPUT_PURPOSE", "finalize_batch", "result_line"]
