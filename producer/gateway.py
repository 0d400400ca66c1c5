"""The optional HTTP gateway: textq's `Client` behind a small authenticated FastAPI app.

For backends that are not written in Python (or that should not hold database and Redis
credentials): they submit, read, long-poll, list and cancel jobs over HTTP instead. Needs the
`api` extra (fastapi, uvicorn); `producer` itself imports without it.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import redis
from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db import store
from db.models import Job, JobStatus
from producer.client import Client
from producer.contract import JobRequest, JobView
from producer.errors import FieldError, InvalidJobError, JobNotFoundError, JobTimeoutError, TextqError
from producer.feedback import FeedbackRequest, FeedbackView

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WAIT_S = 60.0
MAX_PAGE = 200
READY_CHECK_TIMEOUT_S = 3.0


class GatewayConfigError(TextqError, ValueError):
    """The gateway's settings are unsafe or incomplete (e.g. no API key); it refuses to start."""


class GatewaySettings(BaseSettings):
    """`TEXTQ_API_*`: who may call the gateway and how much they may send."""

    model_config = SettingsConfigDict(env_prefix="TEXTQ_API_", extra="ignore")

    # TEXTQ_API_KEYS=key1,key2 — several keys so that a key can be rotated without downtime.
    keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Serve without keys: for a laptop only, never on a network.
    insecure_dev: bool = False
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    # Long polls (?wait=) hold a thread each; past this many they queue instead of starving submits.
    max_concurrent_waits: int = Field(32, ge=1)

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next page."""

    jobs: list[JobView]
    next_cursor: str | None = None


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list, description="each bad field and the rule it broke")


# The request body as documented in /docs; it is validated by the Client, which names each bad field.
_JOB_SCHEMA_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobRequest)
_SUBMIT_DOC = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"oneOf": [
        {"$ref": "#/components/schemas/JobRequest"},
        {"type": "object", "required": ["jobs"], "additionalProperties": False,
         "properties": {"jobs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/JobRequest"}}}},
    ]},
    "examples": {
        "sentiment": {"value": {"task": "classify", "text": "I loved it", "model": "sentiment"}},
        "zero-shot": {"value": {"text": "The striker scored twice", "labels": ["sports", "politics"]}},
        "summary": {"value": {"task": "summarize", "text": "First point. Second point. Third.", "max_sentences": 1}},
        "batch": {"value": {"jobs": [{"text": "great"}, {"text": "awful"}]}},
    },
}}}}


def create_app(client: Client | None = None, settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway app. A `client` given here is the caller's to close; one made here closes on shutdown.

    Raises GatewayConfigError when no API key is configured, unless `insecure_dev` is set.
    """
    settings = settings or GatewaySettings()
    if not settings.keys and not settings.insecure_dev:
        raise GatewayConfigError(
            "no API key configured: set TEXTQ_API_KEYS=<key>[,<key>...] "
            "(or TEXTQ_API_INSECURE_DEV=1 / --insecure-dev to serve without auth on a laptop)"
        )
    if not settings.keys:
        log.warning("textq gateway is running WITHOUT authentication (insecure_dev)")
    owned = client is None
    the_client = client or Client()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            the_client.close()

    app = FastAPI(title="textq", summary="NLP jobs behind a queue", version="1", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(InvalidJobError, _invalid_job)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(JobNotFoundError, _not_found)
    _serve_metrics(app)
    app.include_router(_health_routes(the_client))
    app.include_router(_job_routes(the_client, settings), dependencies=[Depends(_key_checker(settings))])
    _document_job_request(app)
    return app


# -- auth -------------------------------------------------------------------------------------
def _key_checker(settings: GatewaySettings) -> Callable[..., None]:
    """A dependency that accepts `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    keys = [k.get_secret_value().encode() for k in settings.keys]

    def require_key(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
        header: Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))],
    ) -> None:
        if not keys:  # insecure_dev without keys
            return
        given = (bearer.credentials if bearer else header or "").encode()
        # compare_digest against every key: the time taken says nothing about which key is close.
        if not any([hmac.compare_digest(given, k) for k in keys]):  # a list: no short-circuit on purpose
            raise HTTPException(401, "missing or unknown API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_key


# -- body size ----------------------------------------------------------------------------------
class BodySizeLimit:
    """Answers 413 to a body over `max_bytes`: by its Content-Length, or by counting a chunked one.

    Pure ASGI so that an oversized body is refused while it streams in, before it is buffered whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body is larger than {self.max_bytes:,} bytes (TEXTQ_API_MAX_BODY_BYTES)"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


# -- error bodies -------------------------------------------------------------------------------
def _errors_body(detail: str, errors: list[FieldError]) -> dict[str, Any]:
    return {"detail": detail, "errors": [{"field": e.field, "message": e.message} for e in errors]}


async def _invalid_job(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidJobError)
    # Client.submit_many names a batch's fields requests[i]; over HTTP the batch is called "jobs".
    errors = [FieldError(e.field.replace("requests", "jobs", 1) if e.field.startswith("requests") else e.field, e.message)
              for e in exc.errors]
    return JSONResponse(_errors_body("invalid request", errors), status_code=422)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:] or loc
        errors.append(FieldError(".".join(loc) or "request", str(err["msg"]).removeprefix("Value error, ")))
    return JSONResponse(_errors_body("invalid request", errors), status_code=422)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def _document_job_request(app: FastAPI) -> None:
    """Add the JobRequest schema to /openapi.json (the route reads the body untyped, see submit)."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            job = _JOB_SCHEMA_ADAPTER.json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(job.pop("$defs", {}))
            components["JobRequest"] = job
            # The 401 is raised by our dependency, not declared by FastAPI's security classes.
            for path in schema["paths"].values():
                for op in path.values():
                    if op.get("security") is not None:
                        op.setdefault("responses", {})["401"] = {"description": "missing or unknown API key"}
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- metrics ----------------------------------------------------------------------------------
def _serve_metrics(app: FastAPI) -> None:
    """Request counts and latency by route template at GET /metrics (Prometheus text format).

    A registry of the app's own, so that several apps in one process (tests) do not collide.
    """
    registry = CollectorRegistry()
    requests = Counter("textq_gateway_requests_total", "HTTP requests served", ["method", "route", "status"],
                       registry=registry)
    latency = Histogram("textq_gateway_request_seconds", "HTTP request latency", ["method", "route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")  # the template, not the job id
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


# -- routes -----------------------------------------------------------------------------------
def _health_routes(client: Client) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up (no dependency is checked: a liveness probe must not restart us for Redis)."""
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"description": "the database or Redis does not answer"}})
    async def readyz() -> JSONResponse:
        """The database and Redis both answer: send traffic here."""
        checks = {
            "database": await _check(partial(_ping_database, client.sessions)),
            "broker": await _check(partial(_ping_broker, client.settings.broker_url)),
        }
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503)

    return router


def _ping_database(sessions: sessionmaker[Session]) -> None:
    # The jobs table, not just SELECT 1: an unmigrated database cannot serve a request either.
    with sessions() as session:
        session.execute(select(Job.id).limit(1))


def _ping_broker(url: str) -> None:
    connection = redis.Redis.from_url(url, socket_connect_timeout=READY_CHECK_TIMEOUT_S, socket_timeout=READY_CHECK_TIMEOUT_S)
    try:
        connection.ping()
    finally:
        connection.close()


async def _check(ping: Callable[[], None]) -> str:
    """'ok', or the error's class name only (its message may name hosts and users)."""
    try:
        with anyio.fail_after(READY_CHECK_TIMEOUT_S):
            await anyio.to_thread.run_sync(ping, abandon_on_cancel=True)
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__)
        return f"error: {type(exc).__name__}"
    return "ok"


def _job_routes(client: Client, settings: GatewaySettings) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={401: {"description": "missing or unknown API key"}})
    waits = anyio.CapacityLimiter(settings.max_concurrent_waits)
    sessions = client.sessions

    async def blocking(fn: Callable[[], T], limiter: anyio.CapacityLimiter | None = None) -> T:
        return await anyio.to_thread.run_sync(fn, limiter=limiter)

    @router.post(
        "", status_code=202, response_model=JobView | list[JobView],
        responses={422: {"model": ErrorBody}, 413: {"description": "body too large"}}, openapi_extra=_SUBMIT_DOC,
    )
    async def submit(
        payload: Annotated[Any, Body()],
        response: Response,
        idempotency_key: Annotated[str | None, Header(description="same key → same job; a batch uses <key>:<index>")] = None,
    ) -> JobView | list[JobView]:
        """Submit one job request, or `{"jobs": [...]}`: all are accepted or none (422 names each bad field)."""
        jobs, batch = _jobs_of(payload)
        if idempotency_key is not None:
            jobs = [_with_key(job, idempotency_key if not batch else f"{idempotency_key}:{i}", i if batch else None)
                    for i, job in enumerate(jobs)]
        views = await blocking(partial(client.submit_many, jobs))
        if batch:
            return views
        response.headers["Location"] = f"/v1/jobs/{views[0].id}"
        return views[0]

    @router.get("", response_model=JobPage, responses={422: {"model": ErrorBody}})
    async def list_jobs(
        status: JobStatus | None = None,
        model: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[datetime | None, Query(description="only jobs created before this time (ISO 8601)")] = None,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    ) -> JobPage:
        """Jobs newest first, filtered by status and model, `limit` per page."""
        start = _decode_cursor(cursor) if cursor else (before, 0)
        return await blocking(partial(_page, sessions, status=status, model=model, limit=limit, start=start))

    @router.get("/{job_id}", response_model=JobView, responses={404: {"description": "no such job"}})
    async def get_job(
        job_id: str,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long-poll: seconds to wait for the job to finish")] = 0,
    ) -> JobView:
        """A job; with `?wait=S` only once it is finished or S seconds passed (then as it is now)."""
        if wait > 0:
            try:
                return await blocking(partial(client.wait, job_id, timeout=wait, poll_interval=0.1), waits)
            except JobTimeoutError:
                pass
        return await blocking(partial(client.get, job_id))

    @router.post("/{job_id}/cancel", response_model=JobView, responses={404: {"description": "no such job"}})
    async def cancel_job(job_id: str) -> JobView:
        """Cancel a queued or running job (a running job's result is discarded); a finished job is returned as is."""
        return await blocking(partial(client.cancel, job_id))

    @router.post("/{job_id}/feedback", response_model=FeedbackView,
                 responses={404: {"description": "no such job"}, 422: {"model": ErrorBody}})
    async def feedback(job_id: str, body: FeedbackRequest) -> FeedbackView:
        """Store the right label of a succeeded classification job (one of its model's labels), for
        `textq finetune --from-feedback`."""
        return await blocking(partial(client.feedback, job_id, label=body.label))

    return router


def _jobs_of(payload: Any) -> tuple[list[dict[str, Any]], bool]:
    """The job requests in a body, and whether it was a batch."""
    if not isinstance(payload, dict):
        raise InvalidJobError.single("body", 'must be a JSON object: one job request or {"jobs": [...]}')
    if "jobs" not in payload:
        return [payload], False
    jobs = payload["jobs"]
    if set(payload) != {"jobs"}:
        raise InvalidJobError.single("body", 'a batch is {"jobs": [...]} with no other fields')
    if not isinstance(jobs, list) or not jobs:
        raise InvalidJobError.single("jobs", "must be a non-empty list of job requests")
    bad = [FieldError(f"jobs[{i}]", "must be a JSON object") for i, job in enumerate(jobs) if not isinstance(job, dict)]
    if bad:
        raise InvalidJobError(bad)
    return jobs, True


def _with_key(job: dict[str, Any], key: str, index: int | None) -> dict[str, Any]:
    if job.get("idempotency_key") not in (None, key):
        field = "idempotency_key" if index is None else f"jobs[{index}].idempotency_key"
        raise InvalidJobError.single(field, "differs from the Idempotency-Key header; give one or the other")
    return {**job, "idempotency_key": key}


# -- pagination -----------------------------------------------------------------------------------
# A batch's jobs share one created_at, so "created before the last row" would skip the rest of a
# batch cut by a page boundary. The cursor is therefore (t, n): jobs created at or before t,
# skipping the first n of them (the n already shown that were created exactly at t).
_Start = tuple[datetime | None, int]


def _page(sessions: sessionmaker[Session], *, status: JobStatus | None, model: str | None, limit: int, start: _Start) -> JobPage:
    bound, skip = start
    # store.list_jobs is "created_at < before"; t + 1 µs makes it "<= t" (timestamps are µs).
    before = bound + timedelta(microseconds=1) if bound is not None and skip else bound
    with sessions() as session:
        rows: list[Job] = store.list_jobs(session, status=status, model=model, limit=skip + limit, before=before)
        jobs = [JobView.model_validate(j) for j in rows]
    page = jobs[skip:]
    if len(page) < limit:
        return JobPage(jobs=page)
    last = page[-1].created_at
    return JobPage(jobs=page, next_cursor=_encode_cursor(last, sum(j.created_at == last for j in jobs)))


def _encode_cursor(created_at: datetime, skip: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{skip}".encode()).decode()


def _decode_cursor(cursor: str) -> _Start:
    try:
        stamp, skip = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), int(skip)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJobError.single("cursor", "is not a cursor this API returned (use next_cursor as given)") from None


__all__ = ["BodySizeLimit", "GatewayConfigError", "GatewaySettings", "JobPage", "create_app"]
