"""The gateway's error answers: each textq error as its HTTP status and a body naming every bad field."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from producer.errors import (
    FieldError,
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobNotRetryableError,
    ListTimeoutError,
)

log = logging.getLogger(__name__)

UNAVAILABLE_RETRY_AFTER_S = 5


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list, description="each bad field and the rule it broke")


def errors_body(detail: str, errors: list[FieldError]) -> dict[str, Any]:
    return {"detail": detail, "errors": [{"field": e.field, "message": e.message} for e in errors]}


async def _invalid_job(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidJobError)
    # Client.submit_many names a batch's fields requests[i]; over HTTP the batch is called "jobs".
    errors = [FieldError(e.field.replace("requests", "jobs", 1) if e.field.startswith("requests") else e.field, e.message)
              for e in exc.errors]
    return JSONResponse(errors_body("invalid request", errors), status_code=422)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:] or loc
        errors.append(FieldError(".".join(loc) or "request", str(err["msg"]).removeprefix("Value error, ")))
    return JSONResponse(errors_body("invalid request", errors), status_code=422)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _list_timeout(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _idempotency_conflict(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyConflictError)
    return JSONResponse(errors_body(str(exc), [FieldError("Idempotency-Key", exc.reason)]), status_code=409)


async def _not_retryable(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobNotRetryableError)
    return JSONResponse(errors_body(str(exc), [FieldError("status", f"is {exc.status}; only failed jobs can be retried")]),
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


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InvalidJobError, _invalid_job)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(JobNotFoundError, _not_found)
    app.add_exception_handler(ListTimeoutError, _list_timeout)
    app.add_exception_handler(IdempotencyConflictError, _idempotency_conflict)
    app.add_exception_handler(JobNotRetryableError, _not_retryable)
    for unavailable in (DBAPIError, PoolTimeoutError, redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(unavailable, _unavailable)
