"""The gateway's files and batches routes, in the shape of the OpenAI Files and Batch APIs, so that
the official `openai` client (with `base_url` at the gateway) can drive them.

`include_batch_routes(app, client, client_for=...)` adds them, the error handler that answers in
OpenAI's error shape, and the batch driver that runs with the app. Each route works as the Client
that `client_for(scope)` resolves for the caller: its tenant owns what it creates, and another
tenant's file or batch is a 404 like an unknown id. Uploading, deleting a file and creating a batch
need `submit`, reading (a file's content and a batch's results too) needs `read`, cancelling needs
`cancel` (docs/batches.md).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import IO, Annotated, Any, TypeVar

import anyio
import fastapi
from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from producer.batch_driver import BatchDriver
from producer.batch_errors import BatchError, BatchInputError, FileTooLargeError
from producer.batch_files import CHUNK_BYTES, FileView
from producer.batch_settings import BatchSettings
from producer.batches import Batches, BatchPage, BatchView
from producer.client import Client
from producer.tenants import Scope

T = TypeVar("T")

FILES_PATH = "/v1/files"
BATCHES_PATH = "/v1/batches"
MAX_BATCH_PAGE = 100
# Room for the multipart envelope (boundaries, part headers, the purpose field) around the file.
MULTIPART_SLACK = 64 * 1024
# A FastAPI dependency for each scope: the caller's Client if its key has the scope (401/403 otherwise).
ClientFor = Callable[[Scope], Callable[..., Client]]


def same_client(client: Client) -> ClientFor:
    """A ClientFor that gives every caller `client`: for an app without keys or tenants."""
    return lambda _scope: lambda: client


def include_batch_routes(app: FastAPI, client: Client, *, client_for: ClientFor | None = None,
                         dependencies: Sequence[Depends] = (), settings: BatchSettings | None = None) -> None:
    """Serve /v1/files and /v1/batches on `app`, behind `dependencies`, each route as the Client that
    `client_for` gives the caller (without it, `client` for everyone)."""
    batches = Batches(client, settings)  # unscoped: the driver moves every tenant's batches on
    driver = BatchDriver(batches, interval_s=batches.settings.drive_interval_s)
    scoped = _Scoped(batches, client_for or same_client(client))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        driver.start()
        yield
        driver.stop()

    app.add_exception_handler(BatchError, _batch_error)
    app.include_router(_file_routes(scoped), dependencies=list(dependencies))
    app.include_router(_batch_routes(scoped, driver, lifespan), dependencies=list(dependencies))


class _Scoped:
    """Route dependencies: the caller's Batches (as its Client's tenant) when its key has a scope."""

    def __init__(self, batches: Batches, client_for: ClientFor) -> None:
        self.settings = batches.settings
        self.submitter, self.reader, self.canceller = (self._as(batches, client_for(scope))
                                                      for scope in (Scope.SUBMIT, Scope.READ, Scope.CANCEL))

    @staticmethod
    def _as(batches: Batches, caller: Callable[..., Client]) -> Any:
        callers_client = fastapi.Depends(caller)

        def callers_batches(client: Client = callers_client) -> Batches:
            return batches.for_client(client)

        return fastapi.Depends(callers_batches)


async def _blocking(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "missing or unknown API key"},
                                               403: {"description": "the key lacks the route's scope"}}


def _file_routes(scoped: _Scoped) -> APIRouter:
    router = APIRouter(prefix=FILES_PATH, tags=["files"], responses=_RESPONSES)
    limit = scoped.settings.max_file_bytes

    @router.post("", response_model=FileView, responses={400: {"description": "bad upload"}, 413: {"description": "too large"}})
    async def upload_file(request: Request, batches: Batches = scoped.submitter) -> FileView:
        """Upload a JSONL file of batch requests (multipart: `file`, `purpose=batch`); stored in chunks."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
            raise _too_large(limit)
        try:
            form = await MultiPartParser(request.headers, _counted(request.stream(), limit + MULTIPART_SLACK),
                                         max_files=1, max_fields=8).parse()
        except (MultiPartException, KeyError, AssertionError) as exc:  # no or a broken multipart body
            raise BatchInputError(f"send multipart/form-data with a `file` and `purpose=batch` ({exc})", param="file") from None
        try:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise BatchInputError("the form has no `file` part", param="file")
            if not isinstance(purpose, str):
                raise BatchInputError("the form has no `purpose` field (use purpose=batch)", param="purpose")
            return await _blocking(partial(batches.upload, _blocks(upload.file), filename=upload.filename or "upload.jsonl",
                                           purpose=purpose))
        finally:
            await form.close()

    @router.get("/{file_id}", response_model=FileView, responses={404: {"description": "no such file"}})
    async def get_file(file_id: str, batches: Batches = scoped.reader) -> FileView:
        return await _blocking(partial(batches.file, file_id))

    @router.get("/{file_id}/content", response_class=StreamingResponse, responses={404: {"description": "no such file"}})
    async def file_content(file_id: str, batches: Batches = scoped.reader) -> StreamingResponse:
        """The file's bytes, streamed a chunk at a time."""
        chunks = await _blocking(partial(batches.file_content, file_id))
        return StreamingResponse(chunks, media_type="application/jsonl")

    @router.delete("/{file_id}", responses={404: {"description": "no such file"}})
    async def delete_file(file_id: str, batches: Batches = scoped.submitter) -> dict[str, Any]:
        await _blocking(partial(batches.delete_file, file_id))
        return {"id": file_id, "object": "file", "deleted": True}

    return router


def _batch_routes(scoped: _Scoped, driver: BatchDriver, lifespan: Any) -> APIRouter:
    router = APIRouter(prefix=BATCHES_PATH, tags=["batches"], lifespan=lifespan, responses=_RESPONSES)

    @router.post("", response_model=BatchView, responses={400: {"description": "bad request"},
                                                          404: {"description": "no such input file"}})
    async def create_batch(payload: Annotated[Any, Body()], batches: Batches = scoped.submitter) -> BatchView:
        """Create a batch over an uploaded file; it is validated, then run (poll it, or cancel it)."""
        if not isinstance(payload, dict):
            raise BatchInputError("the body must be a JSON object", param="body")
        view = await _blocking(partial(batches.create, payload))
        driver.nudge(view.id)  # the loader runs in the driver's threads
        return view

    @router.get("", response_model=BatchPage)
    async def list_batches(
        limit: Annotated[int, Query(ge=1, le=MAX_BATCH_PAGE)] = 20,
        after: Annotated[str | None, Query(description="`last_id` of the previous page")] = None,
        batches: Batches = scoped.reader,
    ) -> BatchPage:
        """Batches newest first."""
        return await _blocking(partial(batches.list_batches, limit=limit, after=after))

    @router.get("/{batch_id}", response_model=BatchView, responses={404: {"description": "no such batch"}})
    async def get_batch(batch_id: str, batches: Batches = scoped.reader) -> BatchView:
        """The batch with its counts; reading it also moves it on (finalized once its jobs finished)."""
        view = await _blocking(partial(batches.get, batch_id, advance=False))
        if not view.done:
            driver.nudge(batch_id)
        return view

    @router.post("/{batch_id}/cancel", response_model=BatchView,
                 responses={404: {"description": "no such batch"}, 409: {"description": "the batch has ended"}})
    async def cancel_batch(batch_id: str, batches: Batches = scoped.canceller) -> BatchView:
        """Cancel the batch's unfinished jobs; it ends `cancelled` with the results it has."""
        return await _blocking(partial(batches.cancel, batch_id))

    return router


async def _counted(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, refused (413) as soon as more than `limit` bytes came in."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit - MULTIPART_SLACK)
        yield chunk


def _too_large(limit: int) -> FileTooLargeError:
    return FileTooLargeError(f"file is larger than {limit:,} bytes (TEXTQ_BATCH_MAX_FILE_BYTES)", param="file")


def _blocks(handle: IO[bytes]) -> Iterator[bytes]:
    handle.seek(0)
    while block := handle.read(CHUNK_BYTES):
        yield block


async def _batch_error(_request: Request, exc: Exception) -> JSONResponse:
    """OpenAI's error shape (which its client shows), and textq's `detail`."""
    assert isinstance(exc, BatchError)
    error = {"message": str(exc), "type": "invalid_request_error", "param": exc.param, "code": exc.code}
    return JSONResponse({"error": error, "detail": str(exc)}, status_code=exc.status_code)


__all__ = ["BATCHES_PATH", "FILES_PATH", "ClientFor", "include_batch_routes", "same_client"]
