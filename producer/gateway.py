"""The optional HTTP gateway: textq's `Client` behind a small authenticated FastAPI app.

For backends that are not written in Python (or that should not hold database and Redis
credentials): they submit, read, long-poll, list and cancel jobs over HTTP instead. Needs the
`api` extra (fastapi, uvicorn); `producer` itself imports without it.
"""

from __future__ import annotations

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
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producer.batch_routes import FILES_PATH, include_batch_routes
from producer.body_limit import BodySizeLimit
from producer.client import Client, JobStatus
from producer.console import include_console
from producer.console.https import CookiePolicy, parse_proxies
from producer.contract import JobRequest, JobView
from producer.errors import (
    FieldError,
    InvalidJobError,
    JobNotFoundError,
    TextqError,
)
from producer.feedback import FeedbackRequest, FeedbackView
from producer.gateway_auth import Access, Allowed, Canceller, KeyRing, Reader, Submitter, caller, guard
from producer.gateway_errors import ErrorBody, add_error_handlers, errors_body
from producer.paging import MAX_PAGE, JobPage
from producer.queue_metrics import QueueCollector
from producer.tenants import load_api_keys
from producer.waiter import FinishWaiter
from producer.webhook_routes import include_webhook_routes

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WAIT_S = 60.0
READY_CHECK_TIMEOUT_S = 3.0
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
    add_error_handlers(app)
    if settings.metrics != "off":
        _serve_metrics(app, guard(settings.metrics), the_client)
    if settings.docs == "admin":
        _serve_docs_to_admins(app)
    app.include_router(_health_routes(the_client))
    app.include_router(_job_routes(waiter), dependencies=[Depends(caller)])
    # Files, batches and webhook endpoints are per tenant, as jobs: each route gets the caller's scoped Client.
    include_batch_routes(app, the_client, client_for=Allowed)
    include_webhook_routes(app, the_client, client_for=Allowed)
    include_console(app, cookies=settings.cookie_policy())  # /console: same keys, a session cookie (producer/console/)
    _document_job_request(app)
    return app


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
    admin = guard("admin")

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
        client: Submitter,
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
        client: Reader,
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
        client: Reader,
        job_id: str,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long-poll: seconds to wait for the job to finish")] = 0,
    ) -> JobView | Response:
        """A job; with `?wait=S` once it is finished, or as it is after S seconds (a finished job at once)."""
        if wait <= 0:
            return await blocking(partial(client.get, job_id))
        view = await _unless_disconnected(request, partial(waiter.wait, _job_uuid(job_id), partial(client.get, job_id), wait))
        return Response(status_code=CLIENT_CLOSED_REQUEST) if view is None else view

    @router.post("/{job_id}/cancel", response_model=JobView, responses={404: {"description": "no such job"}})
    async def cancel_job(client: Canceller, job_id: str) -> JobView:
        """Cancel a queued or running job (a running job's result is discarded); a finished job is returned as is."""
        return await blocking(partial(client.cancel, job_id))

    @router.post("/{job_id}/feedback", response_model=FeedbackView,
                 responses={404: {"description": "no such job"}, 422: {"model": ErrorBody}})
    async def feedback(client: Submitter, job_id: str, body: FeedbackRequest) -> FeedbackView:
        """Store the right label of a succeeded classification job (one of its model's labels), for
        `textq finetune --from-feedback`."""
        return await blocking(partial(client.feedback, job_id, label=body.label))

    @router.post("/retry", response_model=RetryCountBody, responses={422: {"model": ErrorBody}})
    async def retry_matching(client: Canceller, body: RetryFilterBody) -> RetryCountBody:
        """Retry every failed job matching the filter, in batches (`dry_run`: only count them first).

        Retrying needs the `cancel` scope: like a cancel, it changes what runs, over the key's own jobs.
        """
        count = await blocking(partial(client.retry_matching, status=body.status, model=body.model,
                                       error_type=body.error_type, since=body.since, dry_run=body.dry_run))
        return RetryCountBody(matched=count.matched, retried=count.retried, dry_run=count.dry_run, batches=count.batches)

    @router.post("/{job_id}/retry", response_model=JobView,
                 responses={404: {"description": "no such job"}, 409: {"model": ErrorBody, "description": "not failed"}})
    async def retry_job(client: Canceller, job_id: str) -> JobView:
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
    return JSONResponse(errors_body("unsupported content type", [FieldError("Content-Type", message)]), status_code=415)


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


__all__ = ["GatewayConfigError", "GatewaySettings", "JobPage", "create_app"]
