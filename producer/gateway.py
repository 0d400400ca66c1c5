"""The optional HTTP gateway: textq's `Client` behind a small authenticated FastAPI app.

For backends that are not written in Python (or that should not hold database and Redis
credentials): they submit, read, long-poll, list and cancel jobs over HTTP instead. Needs the
`api` extra (fastapi, uvicorn); `producer` itself imports without it.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import redis
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from producer.batch_routes import FILES_PATH, include_batch_routes
from producer.client import Client, JobStatus
from producer.console import include_console
from producer.console.https import CookiePolicy, parse_proxies
from producer.contract import JobRequest, JobView
from producer.errors import (
    FieldError,
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobNotRetryableError,
    ListTimeoutError,
    TextqError,
)
from producer.feedback import FeedbackRequest, FeedbackView
from producer.paging import MAX_PAGE, JobPage
from producer.queue_metrics import QueueCollector
from producer.tenants import DEFAULT_TENANT, ApiKey, Scope, load_api_keys
from producer.waiter import FinishWaiter
from producer.webhook_routes import include_webhook_routes

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WAIT_S = 60.0
READY_CHECK_TIMEOUT_S = 3.0
Access = Literal["open", "admin", "off"]
UNAVAILABLE_RETRY_AFTER_S = 5
# `curl -d` sends a form content type; the body is JSON all the same. Accepting it is safe: the key
# is a header that a browser never adds by itself, so a cross-site form post cannot submit a job.
JSON_BODY_TYPES = ("application/json", "application/x-www-form-urlencoded")


class GatewayConfigError(TextqError, ValueError):
    """The gateway's settings are unsafe or incomplete (e.g. no API key); it refuses to start."""


class GatewaySettings(BaseSettings):
    """`TEXTQ_API_*`: who may call the gateway and how much they may send."""

    model_config = SettingsConfigDict(env_prefix="TEXTQ_API_", extra="ignore")

    # Entries key[:tenant[:scope+scope]] (producer.tenants); several keys per tenant let a key rotate.
    keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    keys_file: Path | None = None
    # /docs, /redoc, /openapi.json and /metrics: open to anyone, only to an admin key, or not served.
    docs: Access = "open"
    metrics: Access = "open"
    # Serve without keys: for a laptop only, never on a network.
    insecure_dev: bool = False
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    # Long polls (?wait=) wake on finish notifications; this re-read only covers lost notifications.
    wait_recheck_s: float = Field(1.0, gt=0, le=MAX_WAIT_S)
    # The console's session cookie is Secure when the request came over https ("auto"), or always
    # ("always": TLS ends at a proxy that sends no X-Forwarded-Proto). X-Forwarded-Proto is believed
    # from these peers only: addresses or networks, or "*" (producer/console/https.py).
    secure_cookie: Literal["auto", "always"] = "auto"
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("keys", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        parse_proxies(value)
        return value

    def cookie_policy(self) -> CookiePolicy:
        return CookiePolicy(always_secure=self.secure_cookie == "always", trusted_proxies=parse_proxies(self.trusted_proxies))


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

    Raises GatewayConfigError when no API key is configured (unless `insecure_dev` is set) or a
    key entry is malformed.
    """
    settings = settings or GatewaySettings()
    try:
        api_keys = load_api_keys([k.get_secret_value() for k in settings.keys], settings.keys_file)
    except ValueError as exc:
        raise GatewayConfigError(str(exc)) from None
    if not api_keys and not settings.insecure_dev:
        raise GatewayConfigError(
            "no API key configured: set TEXTQ_API_KEYS=<key>[,<key>...] or TEXTQ_API_KEYS_FILE "
            "(or TEXTQ_API_INSECURE_DEV=1 / --insecure-dev to serve without auth on a laptop)"
        )
    if not api_keys:
        log.warning("textq gateway is running WITHOUT authentication (insecure_dev)")
    owned = client is None
    the_client = client or Client()
    waiter = FinishWaiter(the_client.settings.broker_url, the_client.finished_among, recheck_s=settings.wait_recheck_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await waiter.close()
        if owned:
            the_client.close()

    open_docs = settings.docs == "open"
    app = FastAPI(title="textq", summary="NLP jobs behind a queue", version="1", lifespan=lifespan,
                  docs_url="/docs" if open_docs else None, redoc_url="/redoc" if open_docs else None,
                  openapi_url="/openapi.json" if open_docs else None)
    app.state.keys = KeyRing(api_keys, the_client)
    app.state.waiter = waiter  # its `waiting` count tells operators and tests how many jobs are waited for
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, exempt_paths=(FILES_PATH,))
    app.add_exception_handler(InvalidJobError, _invalid_job)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(JobNotFoundError, _not_found)
    app.add_exception_handler(ListTimeoutError, _list_timeout)
    app.add_exception_handler(IdempotencyConflictError, _idempotency_conflict)
    app.add_exception_handler(JobNotRetryableError, _not_retryable)
    for unavailable in (DBAPIError, PoolTimeoutError, redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(unavailable, _unavailable)
    if settings.metrics != "off":
        _serve_metrics(app, _guard(settings.metrics), the_client)
    if settings.docs == "admin":
        _serve_docs_to_admins(app)
    app.include_router(_health_routes(the_client))
    app.include_router(_job_routes(waiter), dependencies=[Depends(_caller)])
    # Files, batches and webhook endpoints are per tenant, as jobs: each route gets the caller's scoped Client.
    include_batch_routes(app, the_client, client_for=_Allowed)
    include_webhook_routes(app, the_client, client_for=_Allowed)
    include_console(app, cookies=settings.cookie_policy())  # /console: same keys, a session cookie (producer/console/)
    _document_job_request(app)
    return app


# -- auth -------------------------------------------------------------------------------------
class KeyRing:
    """The API keys, each with its tenant and scopes, and the Client scoped to what each key may see."""

    def __init__(self, keys: list[ApiKey], client: Client) -> None:
        self._keys = [(k.key.encode(), k) for k in keys]
        # insecure_dev without keys: every caller is an admin of the default tenant.
        self._anonymous = None if keys else ApiKey("", DEFAULT_TENANT, frozenset({Scope.ADMIN}))
        everyone = [*keys, *([self._anonymous] if self._anonymous else [])]
        self._clients = {(k.tenant, k.sees_all): client.for_tenant(k.tenant, see_all=k.sees_all) for k in everyone}

    def key_of(self, given: str) -> ApiKey | None:
        if self._anonymous is not None:
            return self._anonymous
        # compare_digest against every key: the time taken says nothing about which key is close.
        matches = [k for secret, k in self._keys if hmac.compare_digest(given.encode(), secret)]
        return matches[0] if matches else None

    def known_keys(self) -> list[ApiKey]:
        """Every configured key (the anonymous one under insecure_dev): the console's session names one."""
        return [k for _, k in self._keys] or ([self._anonymous] if self._anonymous else [])

    def client_of(self, key: ApiKey) -> Client:
        return self._clients[(key.tenant, key.sees_all)]


def _caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
    header: Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))],
) -> ApiKey:
    """The caller's key, from `Authorization: Bearer <key>` or `X-API-Key: <key>`; 401 without one."""
    key = _keys(request).key_of(bearer.credentials if bearer else header or "")
    if key is None:
        raise HTTPException(401, "missing or unknown API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                            headers={"WWW-Authenticate": "Bearer"})
    return key


def _keys(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


class _Allowed:
    """A dependency: the Client that sees the jobs the caller's key may see, if the key has `scope` (else 403)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, request: Request, key: Annotated[ApiKey, Depends(_caller)]) -> Client:
        if not key.allows(self.scope):
            raise HTTPException(403, f"this API key lacks the {self.scope.value!r} scope "
                                     f"(it has: {', '.join(sorted(key.scopes))})")
        return _keys(request).client_of(key)


_Submitter = Annotated[Client, Depends(_Allowed(Scope.SUBMIT))]
_Reader = Annotated[Client, Depends(_Allowed(Scope.READ))]
_Canceller = Annotated[Client, Depends(_Allowed(Scope.CANCEL))]


def _guard(access: Access) -> list[Any]:
    """Route dependencies for an `access` setting: none when open, an admin key otherwise."""
    return [] if access == "open" else [Depends(_Allowed(Scope.ADMIN))]


# -- body size ----------------------------------------------------------------------------------
class BodySizeLimit:
    """Answers 413 to a body over `max_bytes`: by its Content-Length, or by counting a chunked one.

    Pure ASGI so that an oversized body is refused while it streams in, before it is buffered whole.
    Paths under `exempt_paths` (file uploads) stream through unbuffered and enforce their own limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, exempt_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_paths):
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

    async def _refuse(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
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


async def _list_timeout(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _idempotency_conflict(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyConflictError)
    return JSONResponse(_errors_body(str(exc), [FieldError("Idempotency-Key", exc.reason)]), status_code=409)


async def _not_retryable(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobNotRetryableError)
    return JSONResponse(_errors_body(str(exc), [FieldError("status", f"is {exc.status}; only failed jobs can be retried")]),
                        status_code=409)


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """503 when the database or Redis cannot be reached; any other database error stays a 500 (a bug)."""
    if isinstance(exc, DBAPIError) and not (isinstance(exc, OperationalError) or exc.connection_invalidated):
        raise exc
    service = "Redis" if isinstance(exc, redis.RedisError) else "the database"
    # The class name only: the message may name hosts and users.
    log.warning("%s unavailable: %s", service, type(exc).__name__)
    detail = f"{service} is unavailable ({type(exc).__name__}); retry later"
    return JSONResponse({"detail": detail, "errors": []}, status_code=503,
                        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


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


def _serve_docs_to_admins(app: FastAPI) -> None:
    """/openapi.json, /docs and /redoc for admin keys only (a browser needs a header extension to send one)."""
    admin = _guard("admin")

    @app.get("/openapi.json", include_in_schema=False, dependencies=admin)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=admin)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="textq")

    @app.get("/redoc", include_in_schema=False, dependencies=admin)
    def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title="textq")


# -- metrics ----------------------------------------------------------------------------------
def _serve_metrics(app: FastAPI, dependencies: list[Any], client: Client) -> None:
    """Request counts and latency by route template at GET /metrics (Prometheus text format).

    A registry of the app's own, so that several apps in one process (tests) do not collide.
    """
    registry = CollectorRegistry()
    requests = Counter("textq_gateway_requests_total", "HTTP requests served", ["method", "route", "status"],
                       registry=registry)
    latency = Histogram("textq_gateway_request_seconds", "HTTP request latency", ["method", "route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
    registry.register(QueueCollector(client))

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")  # the template, not the job id
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", include_in_schema=False, dependencies=dependencies)
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
        answers = await anyio.to_thread.run_sync(client.ping, READY_CHECK_TIMEOUT_S)
        checks = {"database": answers.database, "broker": answers.broker}
        return JSONResponse({"status": "ok" if answers.ready else "unavailable", "checks": checks},
                            status_code=200 if answers.ready else 503)

    return router


def _job_routes(waiter: FinishWaiter) -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={
        401: {"description": "missing or unknown API key"},
        403: {"description": "the key lacks the scope"},
        503: {"model": ErrorBody, "description": "the database or Redis does not answer; retry later"},
    })
    # Each route's `client` is scoped to the caller's tenant: another tenant's job is a 404.

    async def blocking(fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    @router.post(
        "", status_code=202, response_model=JobView | list[JobView],
        responses={
            422: {"model": ErrorBody}, 413: {"description": "body too large"},
            409: {"model": ErrorBody, "description": "the Idempotency-Key was used before for a different request"},
            415: {"model": ErrorBody, "description": "the body is not sent as JSON"},
        },
        openapi_extra=_SUBMIT_DOC,
    )
    async def submit(
        request: Request,
        response: Response,
        client: _Submitter,
        idempotency_key: Annotated[str | None, Header(description=(
            "same key and same request → the same job; the same key for a different request → 409. "
            "A batch's jobs are keyed apart from single jobs"))] = None,
    ) -> JobView | list[JobView] | JSONResponse:
        """Submit one job request, or `{"jobs": [...]}`: all are accepted or none (422 names each bad field).

        The body is JSON, read as such when `Content-Type` is `application/json` (or `+json`), absent,
        or `application/x-www-form-urlencoded` (what `curl -d` sends); any other type gets 415.
        """
        refused = _refuse_content_type(request)
        if refused is not None:
            return refused
        jobs, batch = _jobs_of(_parse_json(await request.body()))
        if batch:
            return await blocking(partial(client.submit_many, jobs, idempotency_key=idempotency_key))
        if idempotency_key is not None:
            jobs = [_with_key(jobs[0], idempotency_key)]
        views = await blocking(partial(client.submit_many, jobs))
        response.headers["Location"] = f"/v1/jobs/{views[0].id}"
        return views[0]

    @router.get("", response_model=JobPage, responses={422: {"model": ErrorBody}, 503: {"description": "ran too long"}})
    async def list_jobs(
        client: _Reader,
        status: JobStatus | None = None,
        model: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        before: Annotated[datetime | None, Query(description="only jobs created before this time (ISO 8601)")] = None,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    ) -> JobPage:
        """Jobs newest first, filtered by status and model, `limit` per page."""
        return await blocking(partial(client.list_jobs, status=status, model=model, before=before, limit=limit, cursor=cursor))

    @router.get("/{job_id}", response_model=JobView, responses={404: {"description": "no such job"}})
    async def get_job(
        request: Request,
        client: _Reader,
        job_id: str,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long-poll: seconds to wait for the job to finish")] = 0,
    ) -> JobView | Response:
        """A job; with `?wait=S` once it is finished, or as it is after S seconds (a finished job at once)."""
        if wait <= 0:
            return await blocking(partial(client.get, job_id))
        view = await _unless_disconnected(request, partial(waiter.wait, _job_uuid(job_id), partial(client.get, job_id), wait))
        return Response(status_code=CLIENT_CLOSED_REQUEST) if view is None else view

    @router.post("/{job_id}/cancel", response_model=JobView, responses={404: {"description": "no such job"}})
    async def cancel_job(client: _Canceller, job_id: str) -> JobView:
        """Cancel a queued or running job (a running job's result is discarded); a finished job is returned as is."""
        return await blocking(partial(client.cancel, job_id))

    @router.post("/{job_id}/feedback", response_model=FeedbackView,
                 responses={404: {"description": "no such job"}, 422: {"model": ErrorBody}})
    async def feedback(client: _Submitter, job_id: str, body: FeedbackRequest) -> FeedbackView:
        """Store the right label of a succeeded classification job (one of its model's labels), for
        `textq finetune --from-feedback`."""
        return await blocking(partial(client.feedback, job_id, label=body.label))

    @router.post("/retry", response_model=RetryCountBody, responses={422: {"model": ErrorBody}})
    async def retry_matching(client: _Canceller, body: RetryFilterBody) -> RetryCountBody:
        """Retry every failed job matching the filter, in batches (`dry_run`: only count them first).

        Retrying needs the `cancel` scope: like a cancel, it changes what runs, over the key's own jobs.
        """
        count = await blocking(partial(client.retry_matching, status=body.status, model=body.model,
                                       error_type=body.error_type, since=body.since, dry_run=body.dry_run))
        return RetryCountBody(matched=count.matched, retried=count.retried, dry_run=count.dry_run, batches=count.batches)

    @router.post("/{job_id}/retry", response_model=JobView,
                 responses={404: {"description": "no such job"}, 409: {"model": ErrorBody, "description": "not failed"}})
    async def retry_job(client: _Canceller, job_id: str) -> JobView:
        """Put a failed job back to queued (its error and attempts kept as `previous_error`, `retried_attempts`)."""
        return await blocking(partial(client.retry, job_id))

    return router


class RetryFilterBody(BaseModel):
    """Which failed jobs a bulk retry takes; no filter: every failed job the key sees."""

    model_config = {"extra": "forbid"}

    status: Literal["failed"] = "failed"
    model: str | None = Field(None, min_length=1, max_length=128)
    error_type: str | None = Field(None, min_length=1, max_length=128)
    since: datetime | None = Field(None, description="only jobs that finished at or after this time (ISO 8601, with a zone)")
    dry_run: bool = False


class RetryCountBody(BaseModel):
    matched: int
    retried: int
    dry_run: bool
    batches: int = Field(description="transactions the retry took (TEXTQ_RETRY_BATCH_SIZE jobs each); 0 on a dry run")


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


def _with_key(job: dict[str, Any], key: str) -> dict[str, Any]:
    if job.get("idempotency_key") not in (None, key):
        raise InvalidJobError.single("idempotency_key", "differs from the Idempotency-Key header; give one or the other")
    return {**job, "idempotency_key": key}


def _refuse_content_type(request: Request) -> JSONResponse | None:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not media_type or media_type in JSON_BODY_TYPES or media_type.endswith("+json"):
        return None
    message = f"{media_type!r} is not accepted: send the body as JSON with Content-Type: application/json"
    return JSONResponse(_errors_body("unsupported content type", [FieldError("Content-Type", message)]), status_code=415)


def _parse_json(body: bytes) -> Any:
    """The body as strict JSON (RFC 8259): no NaN or Infinity, and no number beyond a float's range."""
    if not body.strip():
        raise InvalidJobError.single("body", 'is empty: send one job request or {"jobs": [...]} as JSON')
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidJobError.single("body", "is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, and the refusals below
        raise InvalidJobError.single("body", f"is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of the range of a number")
    return value


# -- long polls -------------------------------------------------------------------------------------
CLIENT_CLOSED_REQUEST = 499  # nginx's code: the caller went away before the answer (nobody reads it)


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFoundError(f"{job_id!r} is not a job id (expected a UUID)") from None


async def _unless_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T | None:
    """`work()`, or None as soon as the client disconnects: a long poll does not outlive its caller."""
    result: T | None = None

    async def until_disconnected(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(until_disconnected, group.cancel_scope)
        try:
            result = await work()
        except Exception as exc:  # raised after the group, not wrapped in an ExceptionGroup (404, 503)
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


__all__ = ["BodySizeLimit", "GatewayConfigError", "GatewaySettings", "JobPage", "KeyRing", "create_app"]
