"""`Client`: what a web backend uses to submit jobs and read them back. Imports no torch."""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import redis
from sqlalchemy import Connection

from db import listing, search, store
from db.engine import session_factory, shared_engine
from db.models import DEFAULT_TENANT, FINISHED_STATUSES, JobStatus, utcnow
from db.settings import DatabaseSettings
from producer import overview as overviews
from producer import retries
from producer.batches import Batches, BatchSource, BatchView
from producer.broker import Publisher
from producer.contract import (
    AnyJobRequest,
    JobView,
    batch_job_keys,
    job_input_of,
    parse_request,
)
from producer.errors import (
    FieldError,
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobTimeoutError,
    ListTimeoutError,
)
from producer.feedback import FeedbackView, record_feedback
from producer.limits import record_limits
from producer.notify import watch_finished
from producer.paging import MAX_PAGE, JobPage, decode_cursor, encode_cursor
from producer.registry import Registry, load_registry
from producer.settings import ProducerSettings, producer_settings
from producer.tenants import check_tenant
from producer.versions import resolve_pinned_model
from producer.webhooks import check_webhook_url
from producer.workers import WorkerView, worker_views

log = logging.getLogger(__name__)

JobRequestType = AnyJobRequest
PING_TIMEOUT_S = 3.0
LIST_TIME_LIMIT_S = 5.0
_MODEL_MAX_CHARS = 128


@dataclass(frozen=True)
class Readiness:
    """Each dependency's answer to a ping: "ok" or "error: <class>" (never a message: it may name hosts)."""

    database: str
    broker: str

    @property
    def ready(self) -> bool:
        return self.database == self.broker == "ok"


class Client:
    """Submit classification and summarization jobs; read, wait for and cancel them.

    Settings come from `TEXTQ_*` environment variables unless given. A job's row is committed
    before its message is published, so a job is never enqueued without a record. With `tenant`,
    jobs are submitted as that tenant and only its jobs are seen; without, every job is seen.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        registry: Registry | None = None,
        tenant: str | None = None,
    ) -> None:
        settings = producer_settings()
        if broker_url is not None:
            settings = settings.model_copy(update={"broker_url": broker_url})
        self.settings: ProducerSettings = settings
        self.database_url = database_url or DatabaseSettings().database_url
        self.registry = registry or load_registry(settings.models_file)
        # Autocommit on PostgreSQL: every write here is one statement (db.engine.make_engine).
        self.engine = shared_engine(self.database_url, autocommit=True)
        self.sessions = session_factory(self.database_url, autocommit=True)
        self.publisher = Publisher(settings)
        self._redis = self.publisher.redis  # finish notifications come over the broker's Redis
        record_limits(self._redis, settings.limits)  # for workers to compare with theirs at start
        self.tenant = check_tenant(tenant) if tenant is not None else DEFAULT_TENANT
        # None: every tenant's jobs (this process holds the database credentials anyway).
        self.visible_tenant: str | None = self.tenant if tenant is not None else None
        self._owns_connections = True
        self.list_time_limit_s = LIST_TIME_LIMIT_S
        self.search_window = search.SEARCH_WINDOW  # jobs a text search reads per page (db/search.py)

    def for_tenant(self, tenant: str, *, see_all: bool = False) -> Client:
        """A Client sharing this one's connections that submits as `tenant` and sees only its jobs
        (all jobs with `see_all`); another tenant's job is not found. Closing it closes nothing."""
        scoped = copy.copy(self)
        scoped.tenant = check_tenant(tenant)
        scoped.visible_tenant = None if see_all else tenant
        scoped._owns_connections = False
        return scoped

    # -- submitting -------------------------------------------------------------------------
    def classify(
        self,
        text: str,
        *,
        labels: list[str] | None = None,
        model: str | None = None,
        priority: int = 5,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        truncate: bool | None = None,
    ) -> JobView:
        """Classify `text` with a fixed-label model, or zero-shot over `labels` (a text longer than the
        model's window: the mean of its chunks' logits, unless `truncate`)."""
        return self.submit(
            {"task": "classify", "text": text, "labels": labels, "model": model, "priority": priority,
             "idempotency_key": idempotency_key, "timeout": timeout, "truncate": truncate}
        )

    def summarize(
        self,
        text: str,
        *,
        model: str | None = None,
        max_sentences: int = 3,
        priority: int = 5,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        style: str | None = None,
        max_words: int | None = None,
        truncate: bool | None = None,
    ) -> JobView:
        """Summarize `text` (extractive by default: up to `max_sentences` of its own sentences;
        `style="abstractive"`: written by a language model in up to `max_words` words, map-reduced
        over chunks when the text is longer than the model's window)."""
        return self.submit(
            {"task": "summarize", "text": text, "model": model, "max_sentences": max_sentences,
             "priority": priority, "idempotency_key": idempotency_key, "timeout": timeout,
             "style": style, "max_words": max_words, "truncate": truncate}
        )

    def translate(self, text: str, *, target_language: str, source_language: str | None = None,
                  **options: Any) -> JobView:
        """Translate `text` into `target_language` (ISO 639-1 code or English name; producer.languages).
        `options`: model, priority, idempotency_key, timeout, max_new_tokens, temperature, top_p, truncate."""
        return self.submit({"task": "translate", "text": text, "target_language": target_language,
                            "source_language": source_language, **options})

    def answer(self, question: str, *, context: str, **options: Any) -> JobView:
        """Answer `question` from `context` only (a language model, or a span of the context with an
        extractive QA model). `options` as for translate."""
        return self.submit({"task": "answer", "question": question, "context": context, **options})

    def embed(self, text: str, **options: Any) -> JobView:
        """A normalised embedding of `text` (long texts: the mean of chunk vectors). `options`: model,
        priority, idempotency_key, timeout, truncate."""
        return self.submit({"task": "embed", "text": text, **options})

    def submit(self, request: JobRequestType | dict[str, object]) -> JobView:
        return self.submit_many([request])[0]

    def submit_many(
        self, requests: Sequence[JobRequestType | dict[str, object]], *, idempotency_key: str | None = None
    ) -> list[JobView]:
        """Validate every request, insert all rows in one transaction, then publish them in chunks.

        Any invalid request fails the whole call with InvalidJobError (the index is in the field
        name) and nothing is written or enqueued.

        `idempotency_key` keys the whole batch (its requests then carry none): the same key again
        returns the same jobs. Batch keys and single jobs' keys never collide. A key (the batch's
        or a request's own) used before for a different request (model, task, input or priority;
        the timeout may differ) raises IdempotencyConflictError, and nothing is written.
        """
        if len(requests) > self.settings.max_jobs_per_submit:
            raise InvalidJobError.single(
                "requests",
                f"{len(requests)} jobs in one call; the limit is {self.settings.max_jobs_per_submit} "
                "(TEXTQ_MAX_JOBS_PER_SUBMIT)",
            )
        new_jobs = [self._new_job(i, r, multiple=len(requests) > 1) for i, r in enumerate(requests)]
        if idempotency_key is not None:
            new_jobs = _keyed_batch(new_jobs, idempotency_key)
        with self._insert_transaction(new_jobs) as connection:
            stored = store.create_or_get_jobs(connection, jobs=new_jobs)
            _refuse_reused_keys(new_jobs, stored, idempotency_key)  # raising rolls the batch back
        ids = [job.id for job in stored]
        # Jobs found by their idempotency key (an id other than the new one) were published before.
        fresh = [(job.id, job.model, job.priority) for job, job_id in zip(new_jobs, ids, strict=True) if job_id == job.id]
        try:
            self.publisher.publish_jobs(fresh)
        except Exception as exc:  # the rows are the ledger: the sweeper publishes them later
            log.warning("could not publish to %s (%s); the sweeper will re-publish", self.publisher.redacted_url(), exc)
        # New rows are known without reading them back; only jobs found by key are read.
        earlier = {v.id: v for v in self.get_many([i for job, i in zip(new_jobs, ids, strict=True) if i != job.id])}
        return [earlier.get(job_id) or _queued_view(job) for job, job_id in zip(new_jobs, ids, strict=True)]

    @contextmanager
    def _insert_transaction(self, jobs: Sequence[store.NewJob]) -> Iterator[Connection]:
        """A transaction for the insert. The producer's PostgreSQL engine autocommits each statement;
        a keyed batch gets a real transaction, so that a key found reused rolls back its new rows too."""
        keyed = len(jobs) > 1 and any(job.idempotency_key is not None for job in jobs)
        if not keyed or self.engine.dialect.name != "postgresql":
            with self.engine.begin() as connection:
                yield connection
            return
        with self.engine.connect() as connection, \
                connection.execution_options(isolation_level="READ COMMITTED").begin():
            yield connection

    def _new_job(self, index: int, raw: JobRequestType | dict[str, object], *, multiple: bool) -> store.NewJob:
        try:
            request = parse_request(raw if isinstance(raw, dict) else raw.model_dump(), self.settings.limits)
            spec, pinned = resolve_pinned_model(request, self.registry, self.sessions)
            if request.webhook_url is not None:
                check_webhook_url(request.webhook_url)
        except InvalidJobError as exc:
            if not multiple:
                raise
            raise InvalidJobError(
                [type(e)(f"requests[{index}].{e.field}", e.message) for e in exc.errors]
            ) from None
        return store.NewJob(
            model=spec.name,
            task=spec.task,
            input=job_input_of(request),
            priority=request.priority,
            idempotency_key=request.idempotency_key,
            tenant=self.tenant,
            expires_at=utcnow() + timedelta(seconds=request.timeout) if request.timeout else None,
            webhook_url=request.webhook_url,
            model_version=pinned,
        )

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: uuid.UUID | str) -> JobView:
        with self.sessions() as session:
            job = store.get_job(session, job_id=_as_uuid(job_id), tenant=self.visible_tenant)
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            return JobView.model_validate(job)

    def get_many(self, ids: Sequence[uuid.UUID | str]) -> list[JobView]:
        """Jobs in the order of `ids`; raises JobNotFoundError if any is missing."""
        wanted = [_as_uuid(i) for i in ids]
        if not wanted:
            return []
        with self.sessions() as session:
            found = {}
            for start in range(0, len(wanted), 500):
                chunk = store.get_jobs(session, ids=wanted[start:start + 500], tenant=self.visible_tenant)
                found.update({j.id: JobView.model_validate(j) for j in chunk})
        missing = [str(i) for i in wanted if i not in found]
        if missing:
            raise JobNotFoundError(f"no job with id {', '.join(missing[:5])}")
        return [found[i] for i in wanted]

    def finished_among(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `ids` are finished (of any tenant): one read for many waiters, in chunks of 500 ids."""
        with self.sessions() as session:
            return {job.id for start in range(0, len(ids), 500)
                    for job in store.get_jobs(session, ids=ids[start:start + 500]) if job.status in FINISHED_STATUSES}

    def wait(self, job_id: uuid.UUID | str, *, timeout: float = 30.0, poll_interval: float = 1.0) -> JobView:
        """Block until the job is finished (succeeded, failed, cancelled or expired)."""
        return self.wait_many([job_id], timeout=timeout, poll_interval=poll_interval)[0]

    def wait_many(
        self, ids: Sequence[uuid.UUID | str], *, timeout: float = 60.0, poll_interval: float = 1.0
    ) -> list[JobView]:
        """Block until every job is finished. Wakes on the worker's finish notifications (Redis
        pub/sub) and re-reads the rows they name; re-reads every unfinished row at least every
        `poll_interval` s, in case a notification was lost."""
        wanted = [_as_uuid(i) for i in ids]
        deadline = time.monotonic() + timeout
        views = {v.id: v for v in self.get_many(wanted)}
        pending = {i for i in wanted if not views[i].done}
        if pending:
            with watch_finished(self._redis, pending) as watcher:
                # Read again once subscribed: a job that finished before the subscription is seen here.
                to_read = set(pending)
                read_all_at = time.monotonic()
                while pending:
                    if to_read:
                        views.update((v.id, v) for v in self.get_many(sorted(to_read)))
                        pending -= {i for i in to_read if views[i].done}
                    left = deadline - time.monotonic()
                    if pending and left <= 0:
                        first = views[next(i for i in wanted if i in pending)]
                        raise JobTimeoutError(
                            f"{len(pending)} of {len(wanted)} jobs not finished after {timeout:g}s "
                            f"(first: {first.id}, {first.status}); they may still finish: call get()"
                        )
                    if not pending:
                        break
                    # Only the notified rows: re-reading thousands of pending rows per notification
                    # cost the caller and the database O(jobs x batches).
                    finished = watcher.wait(max(0.0, min(left, read_all_at + poll_interval - time.monotonic())))
                    if finished is None or time.monotonic() >= read_all_at + poll_interval:
                        to_read, read_all_at = set(pending), time.monotonic()
                    else:
                        to_read = pending & finished
        return [views[i] for i in wanted]

    def cancel(self, job_id: uuid.UUID | str) -> JobView:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        # A transaction (these sessions autocommit each statement): the cancel and its webhook events commit together.
        with session_factory(self.database_url).begin() as session:
            store.cancel_job(session, job_id=_as_uuid(job_id), tenant=self.visible_tenant)
        return self.get(job_id)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
        error_type: str | None = None,
        text_contains: str | None = None,
    ) -> JobPage:
        """Jobs newest first, `limit` (1-200) per page; pass the page's `next_cursor` for the next one.

        InvalidJobError names a bad filter or cursor; ListTimeoutError when the query runs past
        `list_time_limit_s` (a rare filter over a big table). With `text_contains`, a page searches
        the next `search_window` (10,000) jobs the other filters leave (db/search.py): it may hold
        fewer than `limit` jobs, or none, and still have a `next_cursor` that searches further back.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidJobError.single("limit", f"must be between 1 and {MAX_PAGE}")
        if before is not None:
            before = _in_utc(before, "before")
        if since is not None:
            since = _in_utc(since, "since")
        for name, value in (("error_type", error_type), ("text_contains", text_contains)):
            if value is not None and not (0 < len(value) <= _MODEL_MAX_CHARS and value.isprintable()):
                raise InvalidJobError.single(name, f"must be 1-{_MODEL_MAX_CHARS} printable characters")
        if model is not None and not (0 < len(model) <= _MODEL_MAX_CHARS and model.isprintable()):
            raise InvalidJobError.single("model", f"must be 1-{_MODEL_MAX_CHARS} printable characters")
        try:
            wanted = JobStatus(status) if status is not None else None
        except ValueError:
            raise InvalidJobError.single("status", f"must be one of {', '.join(JobStatus)}") from None
        after = decode_cursor(cursor) if cursor is not None else None
        matching = listing.JobFilter(status=wanted, model=model, tenant=self.visible_tenant, before=before, since=since,
                                   error_type=error_type)
        try:
            with self.sessions() as session:
                if text_contains is None:
                    rows = listing.list_jobs(session, **asdict(matching), limit=limit, after=after,
                                           time_limit_s=self.list_time_limit_s)
                    resume = listing.PagePosition(rows[-1].created_at, rows[-1].id) if len(rows) == limit else None
                else:  # a window of jobs per page (db/search.py): a page may be short and still have a next one
                    found = search.search_jobs(session, text=text_contains, matching=matching, after=after, limit=limit,
                                               window=self.search_window, time_limit_s=self.list_time_limit_s)
                    rows, resume = found.jobs, found.resume_after
                jobs = [JobView.model_validate(j) for j in rows]
        except TimeoutError:
            raise ListTimeoutError(
                f"listing jobs took longer than {self.list_time_limit_s:g} s: narrow it (status and model together, "
                "or an earlier `before`)"
            ) from None
        return JobPage(jobs=jobs, next_cursor=encode_cursor(resume) if resume is not None else None)

    def retry(self, job_id: uuid.UUID | str) -> JobView:
        """Put a failed job back to queued (producer/retries.py); JobNotRetryableError for any other status."""
        return retries.retry_one(self, _as_uuid(job_id))

    def retry_many(self, ids: Sequence[uuid.UUID | str]) -> int:
        """Retry the failed jobs among `ids` (others are skipped); returns how many were put back."""
        return retries.retry_selected(self, [_as_uuid(i) for i in ids])

    def retry_matching(self, *, status: str = "failed", model: str | None = None, error_type: str | None = None,
                       since: datetime | None = None, dry_run: bool = False,
                       batch_size: int | None = None) -> retries.RetryCount:
        """Retry every failed job matching the filter, `batch_size` per transaction (default: the
        TEXTQ_RETRY_BATCH_SIZE setting); with `dry_run`, only count them."""
        return retries.retry_matching(self, status=status, model=model, error_type=error_type,
                                      since=_in_utc(since, "since") if since is not None else None, dry_run=dry_run,
                                      batch_size=batch_size)

    # -- operations -------------------------------------------------------------------------
    def ping(self, timeout: float = PING_TIMEOUT_S) -> Readiness:
        """Whether the database (its jobs table) and the broker answer, each within `timeout` s."""
        answers = _answers_within(timeout, database=self._ping_database, broker=lambda: self._ping_broker(timeout))
        return Readiness(**answers)

    def _ping_database(self) -> None:
        with self.sessions() as session:
            store.jobs_table_answers(session)

    def _ping_broker(self, timeout: float) -> None:
        if self._redis is None:
            with self.publisher.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
            return
        # A connection of its own: the shared one's timeouts are longer than a probe may wait.
        probe = redis.Redis.from_url(self.settings.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            probe.ping()
        finally:
            probe.close()

    def workers(self) -> list[WorkerView]:
        """Every worker as its last heartbeat described it (the workers table), by name."""
        with self.sessions() as session:
            return worker_views(session)

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting on each registry model's queue."""
        return {name: self.publisher.queue_depth(name) for name in self.registry.names()}

    def queue_stats(self) -> list[overviews.QueueStats]:
        """Each model's queue depth and oldest queued job's age (producer/overview.py): what /metrics exports."""
        return overviews.queue_stats(self)

    def overview(self) -> overviews.Overview:
        """Per model: queue, running, succeeded and failed over the last hour; throughput and latency per minute."""
        return overviews.model_overview(self)

    def failure_groups(self) -> list[overviews.FailureGroupView]:
        """Failed jobs grouped by model and error type, the largest group first."""
        return overviews.failure_groups(self)

    def count_by_status(self) -> dict[str, int]:
        with self.sessions() as session:
            return store.count_by_status(session, tenant=self.visible_tenant)

    def purge_finished(self, older_than: timedelta, *, batch_size: int = 10_000) -> int:
        """Delete jobs that finished more than `older_than` ago, `batch_size` rows per transaction so
        that no purge holds a long lock; returns how many went. Queued and running jobs stay."""
        cutoff = utcnow() - older_than
        total = 0
        while True:
            with self.sessions.begin() as session:
                deleted = store.purge_jobs(session, finished_before=cutoff, limit=batch_size, tenant=self.visible_tenant)
            total += deleted
            if deleted < batch_size:
                return total

    # -- batches ----------------------------------------------------------------------------
    @cached_property
    def _batches(self) -> Batches:
        return Batches(self)

    @property
    def batches(self) -> Batches:
        """Files and batches (producer/batches.py): get, list_batches, cancel, wait, results; as this
        Client's tenant, seeing only the files and batches it sees its jobs of."""
        shared = self._batches  # a Client from for_tenant copies its parent's: rebound to it here
        return shared if shared.client is self else shared.for_client(self)

    def submit_batch(self, source: BatchSource, **options: Any) -> BatchView:
        """Upload a JSONL batch (a file's path, or the lines as dicts), create the batch and enqueue its
        jobs, as this Client's tenant."""
        return self.batches.submit(source, **options)

    def feedback(self, job_id: uuid.UUID | str, *, label: str) -> FeedbackView:
        """Store the right label of a succeeded classification job, for `textq finetune --from-feedback`."""
        return record_feedback(self.sessions, self.get(job_id), label)

    def close(self) -> None:
        if self._owns_connections:
            self.publisher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keyed_batch(jobs: list[store.NewJob], key: str) -> list[store.NewJob]:
    own = [FieldError(f"requests[{i}].idempotency_key", "give the batch's idempotency_key or the requests' own, not both")
           for i, job in enumerate(jobs) if job.idempotency_key is not None]
    if own:
        raise InvalidJobError(own)
    return [replace(job, idempotency_key=job_key) for job, job_key in zip(jobs, batch_job_keys(key, len(jobs)), strict=True)]


def _refuse_reused_keys(jobs: Sequence[store.NewJob], stored: Sequence[store.NewJob], batch_key: str | None) -> None:
    """IdempotencyConflictError if a job found by its key is not the same request (the timeout aside)."""
    for index, (job, earlier) in enumerate(zip(jobs, stored, strict=True)):
        differs = [name for name in ("model", "task", "input", "priority") if getattr(job, name) != getattr(earlier, name)]
        if earlier.id == job.id or not differs:
            continue
        which = f" (job {index} of the batch)" if batch_key is not None else f" (requests[{index}])" if len(jobs) > 1 else ""
        raise IdempotencyConflictError(
            batch_key or job.idempotency_key or "",
            f"its {', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'}{which}; send a new key for a new request",
        )


def _queued_view(job: store.NewJob) -> JobView:
    return JobView(
        id=job.id, status="queued", model=job.model, task=job.task, input=job.input, priority=job.priority,
        created_at=job.created_at, expires_at=job.expires_at, model_version=job.model_version,
    )


def _answers_within(timeout: float, **checks: Callable[[], None]) -> dict[str, str]:
    """Runs the checks at once, each in a daemon thread, and waits at most `timeout` s for all of them."""
    answers = dict.fromkeys(checks, "error: timeout")

    def run(name: str, check: Callable[[], None]) -> None:
        try:
            check()
            answers[name] = "ok"
        except Exception as exc:
            log.warning("%s check failed: %s", name, type(exc).__name__)
            answers[name] = f"error: {type(exc).__name__}"

    threads = [threading.Thread(target=run, args=item, daemon=True, name=f"textq-ping-{item[0]}") for item in checks.items()]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(answers)


def _in_utc(value: datetime, field: str) -> datetime:
    """`value` in UTC; InvalidJobError for a naive time or one whose UTC form is out of range."""
    if value.utcoffset() is None:
        raise InvalidJobError.single(field, "needs a time zone (e.g. 2024-05-01T12:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidJobError.single(field, "is out of the range of dates") from None


def _as_uuid(job_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFoundError(f"{job_id!r} is not a job id (expected a UUID)") from None


__all__ = ["Client", "JobPage", "JobStatus", "Readiness", "WorkerView"]
