"""Operator retries through the Client: one failed job, or every failed job matching a filter, in batches.

A retried job goes back to queued with its previous error and its earlier attempts kept on the
row (`previous_error`, `retried_attempts`); its attempt budget starts again, since an operator
retries after fixing what failed it. It is published again and then runs under the normal rules.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from db import retries, store
from producer.contract import JobView
from producer.errors import InvalidJobError, JobNotFoundError, JobNotRetryableError

if TYPE_CHECKING:
    from producer.client import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryCount:
    """How many jobs a bulk retry matched, how many it put back (0 on a dry run), in how many transactions."""

    matched: int
    retried: int
    dry_run: bool
    batches: int = 0

    def describe(self) -> str:
        """What an operator reads (the CLI and the console say the same)."""
        if self.matched == 0:
            return "no failed jobs match: none retried"
        if self.dry_run:
            return f"{self.matched:,} failed jobs match (dry run: none retried)"
        return f"retried {self.retried:,} of {self.matched:,} matching failed jobs in {self.batches:,} batches"


def retry_one(client: Client, job_id: uuid.UUID) -> JobView:
    """Retry a failed job; JobNotFoundError for an unknown id, JobNotRetryableError for any other status."""
    put_back, views = _retry_ids(client, [job_id], read_back=True)
    if not put_back:
        with client.sessions() as session:
            status = retries.retry_status(session, job_id=job_id, tenant=client.visible_tenant)
        if status is None:
            raise JobNotFoundError(f"no job with id {job_id}")
        raise JobNotRetryableError(str(job_id), status)
    return views[0]


def retry_selected(client: Client, ids: Sequence[uuid.UUID]) -> int:
    """Retry the failed jobs among `ids` (others are skipped); returns how many were put back."""
    size = client.settings.retry_batch_size
    return sum(len(_retry_ids(client, ids[start:start + size])[0]) for start in range(0, len(ids), size))


def retry_matching(
    client: Client,
    *,
    status: str = "failed",
    model: str | None = None,
    error_type: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> RetryCount:
    """Retry every failed job matching the filter (finished at or after `since`), `batch_size` per
    transaction (default: the retry_batch_size setting); with `dry_run`, only count them."""
    batch_size = client.settings.retry_batch_size if batch_size is None else batch_size
    if status not in {s.value for s in retries.RETRYABLE_STATUSES}:
        raise InvalidJobError.single("status", "only failed jobs can be retried (status=failed)")
    if batch_size < 1:
        raise InvalidJobError.single("batch_size", "must be at least 1")
    matching = retries.RetryFilter(model=model, error_type=error_type, finished_since=since, tenant=client.visible_tenant)
    with client.sessions() as session:
        matched = retries.count_retryable(session, matching=matching)
    if dry_run or matched == 0:
        return RetryCount(matched=matched, retried=0, dry_run=dry_run)
    retried, batches, after = 0, 0, None
    while True:
        with client.sessions() as session:
            page = retries.retryable_ids(session, matching=matching, after=after, limit=batch_size)
        if not page:
            break
        retried += len(_retry_ids(client, [job_id for _, job_id in page])[0])
        batches += 1
        after = page[-1]
        if len(page) < batch_size:
            break
    log.info("retried %d of %d matching failed jobs in %d batches", retried, matched, batches)
    return RetryCount(matched=matched, retried=retried, dry_run=False, batches=batches)


def _retry_ids(
    client: Client, ids: Sequence[uuid.UUID], *, read_back: bool = False
) -> tuple[list[tuple[uuid.UUID, str, int]], list[JobView]]:
    """Put back the failed ones among `ids` in one transaction, then publish them (the sweeper covers
    a lost publish). With `read_back`, also the jobs as put back: read before a worker can claim them."""
    with client.sessions.begin() as session:
        put_back = retries.retry_jobs(session, ids=ids, tenant=client.visible_tenant)
        views = [JobView.model_validate(job) for job in store.get_jobs(session, ids=[p[0] for p in put_back])] \
            if read_back and put_back else []
    try:
        client.publisher.publish_jobs(put_back)
    except Exception as exc:  # the rows are the ledger: the sweeper publishes them later
        log.warning("could not publish retried jobs to %s (%s); the sweeper will re-publish",
                    client.publisher.redacted_url(), type(exc).__name__)
    return put_back, views


__all__ = ["RetryCount", "retry_matching", "retry_one", "retry_selected"]
