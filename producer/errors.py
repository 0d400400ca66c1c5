"""textq's exceptions. Each says when it is raised and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass


class TextqError(Exception):
    """Base class of every error textq raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidJobError(TextqError, ValueError):
    """A job request broke the contract; nothing was written or enqueued. Fix the named fields."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("invalid job request: " + "; ".join(str(e) for e in errors))

    @classmethod
    def single(cls, field: str, message: str) -> InvalidJobError:
        return cls([FieldError(field, message)])


class JobNotFoundError(TextqError, LookupError):
    """No job has this id (it was never created, or was purged by retention)."""


class JobNotRetryableError(TextqError, ValueError):
    """Only a failed job can be retried; this one is in another state (it is left as it is)."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is {status}: only a failed job can be retried")


class JobTimeoutError(TextqError, TimeoutError):
    """The job did not finish within the wait timeout; it may still finish later: call get()."""


class IdempotencyConflictError(TextqError, ValueError):
    """An idempotency key was used before for a different request (another model, task, input or
    priority); nothing was written or enqueued. Send a new key for a new request."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"idempotency key {key!r} was used before for a different request: {reason}")


class ListTimeoutError(TextqError, TimeoutError):
    """Listing jobs ran past its time limit (a rare filter over a big table); narrow the filters."""
