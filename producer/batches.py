"""Batches: a JSONL file of job requests in, an output file and an error file out, in the shape of
the OpenAI Batch API. `Batches(client)` is the one way in; the gateway's routes, the CLI and
`Client.submit_batch` are skins over it.

Life of a batch: `validating` (the loader checks every line) -> `in_progress` (its lines are jobs at
the batch's priority) -> `finalizing` (every job finished; the files are written) -> `completed`,
`expired` (its completion window ended first) or `cancelled`; `failed` if the file had bad lines.

Files and batches belong to the tenant of the Client that made them (a batch's jobs and result
files too), and a Client sees only those of its `visible_tenant`, as with jobs: another tenant's
file or batch is not found, with the same error as an unknown id.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from db import batches as store
from db.engine import session_factory
from db.models import FINAL_BATCH_STATUSES, Batch, BatchStatus, JobStatus, utcnow
from producer.batch_counts import RecentCounts
from producer.batch_errors import BatchInputError, BatchNotFoundError, BatchStateError
from producer.batch_files import CHUNK_BYTES, FileView, delete_file, file_content, file_not_found, get_file, store_upload
from producer.batch_finalizer import finalize_batch
from producer.batch_lines import BATCH_ENDPOINT
from producer.batch_loader import LoaderContext, load_batch
from producer.batch_settings import BatchSettings
from producer.contract import MAX_TIMEOUT_S
from producer.errors import InvalidJobError
from producer.webhooks import check_webhook_url

if TYPE_CHECKING:
    from producer.client import Client

log = logging.getLogger(__name__)

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_METADATA_KEYS = 16
BatchSource = str | os.PathLike[str] | Iterable[Mapping[str, Any]]


def parse_window(window: str) -> timedelta:
    """A completion window such as '24h', '30m', '90s' or '7d' (at most 7 days)."""
    match = _WINDOW.match(window)
    seconds = int(match.group(1)) * _WINDOW_UNITS[match.group(2)] if match else 0
    if not match or seconds > MAX_TIMEOUT_S:
        raise ValueError(f"must be a number and a unit (s, m, h, d) up to 7d, such as '24h'; got {window!r}")
    return timedelta(seconds=seconds)


class BatchRequest(BaseModel):
    """POST /v1/batches: the OpenAI fields, and textq's own (`priority`, `skip_invalid_lines`)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    priority: Annotated[int | None, Strict(), Field(ge=0, le=9, description="0 runs first, 9 last; default 8")] = None
    skip_invalid_lines: bool = Field(False, description="enqueue the valid lines; bad ones go to the error file")
    webhook_url: str | None = Field(None, max_length=2048, description="https URL to POST the ended batch to (signed)")

    @field_validator("endpoint")
    @classmethod
    def _served(cls, endpoint: str) -> str:
        if endpoint != BATCH_ENDPOINT:
            raise ValueError(f"textq batches serve {BATCH_ENDPOINT} only, not {endpoint!r}")
        return endpoint

    @field_validator("completion_window")
    @classmethod
    def _window(cls, window: str) -> str:
        parse_window(window)
        return window

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is not None and (len(metadata) > MAX_METADATA_KEYS or any(len(k) > 64 for k in metadata)):
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys of at most 64 characters")
        return metadata


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchView(BaseModel):
    """A batch as the OpenAI Batch API shows it (timestamps in Unix seconds), plus textq's fields."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    priority: int
    skip_invalid_lines: bool

    @property
    def done(self) -> bool:
        return self.status in FINAL_BATCH_STATUSES

    @classmethod
    def of(cls, batch: Batch, job_counts: Mapping[str, int] | None = None) -> BatchView:
        """The view of `batch`; an unfinished batch's counts come from `job_counts` (its jobs by status)."""
        if job_counts is None:
            counts = RequestCounts(total=batch.total, completed=batch.completed, failed=batch.failed)
        else:
            succeeded = job_counts.get(JobStatus.SUCCEEDED, 0)
            finished = sum(n for status, n in job_counts.items() if status not in (JobStatus.QUEUED, JobStatus.RUNNING))
            counts = RequestCounts(total=batch.total, completed=succeeded, failed=finished - succeeded)
        stamps = {name: _unix(getattr(batch, name)) for name in (
            "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
            "cancelling_at", "cancelled_at")}
        return cls(id=batch.id, endpoint=batch.endpoint, errors=batch.errors, input_file_id=batch.input_file_id,
                   completion_window=batch.completion_window, status=BatchStatus(batch.status),
                   output_file_id=batch.output_file_id, error_file_id=batch.error_file_id,
                   created_at=int(batch.created_at.timestamp()), request_counts=counts, metadata=batch.meta,
                   priority=batch.priority, skip_invalid_lines=batch.skip_invalid_lines, **stamps)


class BatchPage(BaseModel):
    """A page of batches, newest first; pass `last_id` as `after` for the next."""

    object: Literal["list"] = "list"
    data: list[BatchView]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


class Batches:
    """Files and batches over a Client's database and broker, as the Client's tenant."""

    def __init__(self, client: Client, settings: BatchSettings | None = None) -> None:
        self.client = client
        self.settings = settings or BatchSettings()
        # Transactions of several statements: the Client's own sessions autocommit each statement.
        self.sessions = session_factory(client.database_url)
        self.context = LoaderContext(sessions=self.sessions, registry=client.registry, limits=client.settings.limits,
                                     publisher=client.publisher, lease=timedelta(seconds=self.settings.lease_s))
        self.counts = RecentCounts(self.settings.counts_ttl_s)

    def for_client(self, client: Client) -> Batches:
        """These Batches (sharing settings and sessions) as `client`'s tenant, seeing what it sees."""
        scoped = copy.copy(self)
        scoped.client = client
        return scoped

    @property
    def _visible(self) -> str | None:
        return self.client.visible_tenant

    # -- files ----------------------------------------------------------------------------------
    def upload(self, blocks: Iterable[bytes], *, filename: str, purpose: str = "batch") -> FileView:
        """Store a JSONL file read block by block; refused whole if empty or over the limits."""
        return store_upload(self.sessions, blocks, filename=filename, purpose=purpose, tenant=self.client.tenant,
                            max_bytes=self.settings.max_file_bytes, max_lines=self.settings.max_lines)

    def file(self, file_id: str) -> FileView:
        return get_file(self.sessions, file_id, visible_tenant=self._visible)

    def file_content(self, file_id: str) -> Iterator[bytes]:
        return file_content(self.sessions, file_id, visible_tenant=self._visible)

    def delete_file(self, file_id: str) -> None:
        delete_file(self.sessions, file_id, visible_tenant=self._visible)

    # -- batches --------------------------------------------------------------------------------
    def create(self, request: BatchRequest | Mapping[str, Any]) -> BatchView:
        """Record a batch (validating) over an uploaded file; `load` validates and enqueues it."""
        if not isinstance(request, BatchRequest):
            request = _parse_batch_request(request)
        if request.webhook_url is not None:
            try:
                check_webhook_url(request.webhook_url)
            except InvalidJobError as exc:
                raise BatchInputError(str(exc.errors[0]), param="webhook_url") from None
        now = utcnow()
        with self.sessions.begin() as session:
            source = store.get_file(session, file_id=request.input_file_id, tenant=self._visible)
            if source is None:
                raise file_not_found(request.input_file_id, param="input_file_id")
            if source.purpose != "batch":
                raise BatchInputError(f"file {source.id} has purpose {source.purpose!r}; upload the input with purpose 'batch'",
                                      param="input_file_id")
            batch = Batch(
                id=f"batch_{uuid.uuid4().hex}", endpoint=request.endpoint, input_file_id=request.input_file_id,
                tenant=self.client.tenant, completion_window=request.completion_window, status=BatchStatus.VALIDATING.value,
                priority=self.settings.default_priority if request.priority is None else request.priority,
                skip_invalid_lines=request.skip_invalid_lines, webhook_url=request.webhook_url, meta=request.metadata,
                created_at=now,
                expires_at=now + parse_window(request.completion_window), total=0, loaded_lines=0, loaded=False,
                completed=0, failed=0,
            )
            store.add_batch(session, batch=batch)
            return BatchView.of(batch, {})

    def load(self, batch_id: str) -> bool:
        """Validate and enqueue the batch's file here and now, unless another process holds it; True if this call did."""
        owner = _owner()
        with self.sessions.begin() as session:
            taken = store.take_lease(session, batch_id=batch_id, owner=owner, until=utcnow() + self.context.lease,
                                     loaded=False, statuses=[BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS,
                                                             BatchStatus.CANCELLING], tenant=self._visible)
        if taken:
            load_batch(self.context, batch_id, owner)
        return taken

    def advance(self, batch_id: str, *, resume_loading: bool = True) -> None:
        """Move the batch on: resume a loader that died, expire its jobs once its window ended,
        finalize it once every job finished. Any process may call this, any number of times (another
        tenant's batch is left as it is)."""
        with self.sessions() as session:
            batch = store.get_batch(session, batch_id=batch_id, tenant=self._visible)
        if batch is None or batch.status in FINAL_BATCH_STATUSES:
            return
        if not batch.loaded:
            if resume_loading:
                self.load(batch_id)  # a no-op while a live loader holds the lease
            return
        if batch.expires_at <= utcnow() and batch.status == BatchStatus.IN_PROGRESS:
            with self.sessions.begin() as session:
                store.expire_batch_jobs(session, batch_id=batch_id)
        finalize_batch(self.sessions, batch_id, _owner(), lease=self.context.lease)

    def get(self, batch_id: str, *, advance: bool = True) -> BatchView:
        """The batch now; with `advance`, finalized first if it is due (not resuming a loader: see `wait`)."""
        if advance:
            self.advance(batch_id, resume_loading=False)
        with self.sessions() as session:
            batch = store.get_batch(session, batch_id=batch_id, tenant=self._visible)
            if batch is None:
                raise BatchNotFoundError(f"no batch with id {batch_id!r}", param="batch_id")
            final = batch.status in FINAL_BATCH_STATUSES
            return BatchView.of(batch, None if final else self.counts.of(session, batch_id))

    def list_batches(self, *, limit: int = 20, after: str | None = None) -> BatchPage:
        with self.sessions() as session:
            rows = store.list_batches(session, limit=limit + 1, after=after, tenant=self._visible)
            views = [BatchView.of(b, None if b.status in FINAL_BATCH_STATUSES else self.counts.of(session, b.id))
                     for b in rows[:limit]]
        return BatchPage(data=views, first_id=views[0].id if views else None, last_id=views[-1].id if views else None,
                         has_more=len(rows) > limit)

    def cancel(self, batch_id: str) -> BatchView:
        """Cancel the batch's unfinished jobs; it ends `cancelled`, with the results it has."""
        with self.sessions.begin() as session:
            cancelled = store.request_cancel(session, batch_id=batch_id, tenant=self._visible)
        if not cancelled:
            view = self.get(batch_id, advance=False)  # raises for an unknown batch
            if view.status != BatchStatus.CANCELLING:
                raise BatchStateError(f"batch {batch_id} is {view.status.value}; only a validating or in_progress batch "
                                      "can be cancelled", param="batch_id")
        return self.get(batch_id)

    def wait(self, batch_id: str, *, timeout: float = 3600.0, poll_interval: float = 1.0,
             on_progress: Callable[[BatchView], None] | None = None) -> BatchView:
        """Block until the batch is completed, failed, expired or cancelled, moving it on meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.advance(batch_id)
            view = self.get(batch_id, advance=False)
            if on_progress is not None:
                on_progress(view)
            if view.done:
                return view
            if time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} is still {view.status.value} after {timeout:g}s")
            time.sleep(poll_interval)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The output file's lines, then the error file's, decoded; the batch must have ended."""
        view = self.get(batch_id)
        if not view.done:
            raise BatchStateError(f"batch {batch_id} is {view.status.value}; its results exist once it ends",
                                  param="batch_id")
        for file_id in (view.output_file_id, view.error_file_id):
            if file_id is not None:
                yield from _json_lines(self.file_content(file_id))

    def submit(self, source: BatchSource, *, completion_window: str = "24h", priority: int | None = None,
               skip_invalid_lines: bool = False, metadata: dict[str, str] | None = None,
               webhook_url: str | None = None) -> BatchView:
        """Upload `source` (a JSONL file's path, or the lines as dicts), create the batch and load it here."""
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            upload = self.upload(_file_blocks(path), filename=path.name)
        else:
            upload = self.upload(_encoded_lines(source), filename="batch.jsonl")
        batch = self.create(BatchRequest(input_file_id=upload.id, endpoint=BATCH_ENDPOINT, completion_window=completion_window,
                                         priority=priority, skip_invalid_lines=skip_invalid_lines, metadata=metadata,
                                         webhook_url=webhook_url))
        self.load(batch.id)
        return self.get(batch.id)


def _parse_batch_request(data: Mapping[str, Any]) -> BatchRequest:
    try:
        return BatchRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise BatchInputError(f"{field}: {str(err['msg']).removeprefix('Value error, ')}", param=field) from None


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield block


def _encoded_lines(lines: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    block = bytearray()
    for line in lines:
        block += json.dumps(line, separators=(",", ":")).encode() + b"\n"
        if len(block) >= CHUNK_BYTES:
            yield bytes(block)
            block.clear()
    if block:
        yield bytes(block)


def _json_lines(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for chunk in chunks:
        for line in chunk.splitlines():
            if line:
                yield json.loads(line)


__all__ = ["BatchPage", "BatchRequest", "BatchSource", "BatchView", "Batches", "RequestCounts", "parse_window"]
