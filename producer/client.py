"""`Client`: what a web backend uses to submit jobs and read them back. Imports no torch."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from db import store
from db.engine import session_factory, shared_engine
from db.models import utcnow
from db.settings import DatabaseSettings
from producer.broker import Publisher
from producer.contract import (
    AnyJobRequest,
    JobView,
    job_input_of,
    parse_request,
    resolve_model,
)
from producer.errors import InvalidJobError, JobNotFoundError, JobTimeoutError
from producer.notify import watch_finished
from producer.registry import Registry, default_registry
from producer.settings import ProducerSettings, producer_settings

log = logging.getLogger(__name__)

JobRequestType = AnyJobRequest


class Client:
    """Submit classification and summarization jobs; read, wait for and cancel them.

    Settings come from `TEXTQ_*` environment variables unless given. A job's row is committed
    before its message is published, so a job is never enqueued without a record.
    """

    def __init__(
        self,
        *,
        database_url: str | None = None,
        broker_url: str | None = None,
        registry: Registry | None = None,
    ) -> None:
        settings = producer_settings()
        if broker_url is not None:
            settings = settings.model_copy(update={"broker_url": broker_url})
        self.settings: ProducerSettings = settings
        self.database_url = database_url or DatabaseSettings().database_url
        self.registry = registry or default_registry()
        # Autocommit on PostgreSQL: every write here is one statement (db.engine.make_engine).
        self.engine = shared_engine(self.database_url, autocommit=True)
        self.sessions = session_factory(self.database_url, autocommit=True)
        self.publisher = Publisher(settings)
        self._redis = self.publisher.redis  # finish notifications come over the broker's Redis

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

    def submit_many(self, requests: Sequence[JobRequestType | dict[str, object]]) -> list[JobView]:
        """Validate every request, insert all rows in one transaction, then publish them in chunks.

        Any invalid request fails the whole call with InvalidJobError (the index is in the field
        name) and nothing is written or enqueued.
        """
        if len(requests) > self.settings.max_jobs_per_submit:
            raise InvalidJobError.single(
                "requests",
                f"{len(requests)} jobs in one call; the limit is {self.settings.max_jobs_per_submit} "
                "(TEXTQ_MAX_JOBS_PER_SUBMIT)",
            )
        new_jobs = [self._new_job(i, r, multiple=len(requests) > 1) for i, r in enumerate(requests)]
        with self.engine.begin() as connection:
            ids = store.create_jobs(connection, jobs=new_jobs)
        # Jobs found by their idempotency key (an id other than the new one) were published before.
        fresh = [(job.id, job.model, job.priority) for job, job_id in zip(new_jobs, ids, strict=True) if job_id == job.id]
        try:
            self.publisher.publish_jobs(fresh)
        except Exception as exc:  # the rows are the ledger: the sweeper publishes them later
            log.warning("could not publish to %s (%s); the sweeper will re-publish", self.publisher.redacted_url(), exc)
        # New rows are known without reading them back; only jobs found by key are read.
        earlier = {v.id: v for v in self.get_many([i for job, i in zip(new_jobs, ids, strict=True) if i != job.id])}
        return [earlier.get(job_id) or _queued_view(job) for job, job_id in zip(new_jobs, ids, strict=True)]

    def _new_job(self, index: int, raw: JobRequestType | dict[str, object], *, multiple: bool) -> store.NewJob:
        try:
            request = parse_request(raw if isinstance(raw, dict) else raw.model_dump())
            spec = resolve_model(request, self.registry)
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
            expires_at=utcnow() + timedelta(seconds=request.timeout) if request.timeout else None,
        )

    # -- reading ----------------------------------------------------------------------------
    def get(self, job_id: uuid.UUID | str) -> JobView:
        with self.sessions() as session:
            job = store.get_job(session, job_id=_as_uuid(job_id))
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
                found.update({j.id: JobView.model_validate(j) for j in store.get_jobs(session, ids=wanted[start:start + 500])})
        missing = [str(i) for i in wanted if i not in found]
        if missing:
            raise JobNotFoundError(f"no job with id {', '.join(missing[:5])}")
        return [found[i] for i in wanted]

    def wait(self, job_id: uuid.UUID | str, *, timeout: float = 30.0, poll_interval: float = 1.0) -> JobView:
        """Block until the job is finished (succeeded, failed, cancelled or expired)."""
        return self.wait_many([job_id], timeout=timeout, poll_interval=poll_interval)[0]

    def wait_many(
        self, ids: Sequence[uuid.UUID | str], *, timeout: float = 60.0, poll_interval: float = 1.0
    ) -> list[JobView]:
        """Block until every job is finished. Wakes on the worker's finish notification (Redis
        pub/sub) and re-reads the rows; polls every `poll_interval` s in case one was missed."""
        wanted = [_as_uuid(i) for i in ids]
        deadline = time.monotonic() + timeout
        views = {v.id: v for v in self.get_many(wanted)}
        pending = [i for i in wanted if not views[i].done]
        if pending:
            with watch_finished(self._redis, pending) as watcher:
                # Read again once subscribed: a job that finished before the subscription is seen here.
                while pending:
                    views.update((v.id, v) for v in self.get_many(pending))
                    pending = [i for i in pending if not views[i].done]
                    left = deadline - time.monotonic()
                    if pending and left <= 0:
                        first = views[pending[0]]
                        raise JobTimeoutError(
                            f"{len(pending)} of {len(wanted)} jobs not finished after {timeout:g}s "
                            f"(first: {first.id}, {first.status}); they may still finish: call get()"
                        )
                    if pending:
                        watcher.wait(min(left, poll_interval))
        return [views[i] for i in wanted]

    def cancel(self, job_id: uuid.UUID | str) -> JobView:
        """Cancel a queued or running job; a finished job is returned unchanged."""
        with self.sessions.begin() as session:
            store.cancel_job(session, job_id=_as_uuid(job_id))
        return self.get(job_id)

    def close(self) -> None:
        self.publisher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _queued_view(job: store.NewJob) -> JobView:
    return JobView(
        id=job.id, status="queued", model=job.model, task=job.task, input=job.input, priority=job.priority,
        created_at=job.created_at, expires_at=job.expires_at,
    )


def _as_uuid(job_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(job_id, uuid.UUID):
        return job_id
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFoundError(f"{job_id!r} is not a job id (expected a UUID)") from None
