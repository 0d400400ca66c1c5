"""The retry policy, whole: which failures are transient, how often a job is tried, how long it waits.

Two kinds of transient failure are retried:
- a database error (a dropped connection, a restarting server): `with_retries` retries the
  statement in place, with exponential backoff and jitter;
- a job's own failure (torch out of memory even alone, or a runner's `Retry`): the job is released
  back to queued, not runnable before its backoff, until it has been tried `max_attempts` times.
Anything else is permanent: the statement raises, the job fails.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_ATTEMPTS = 8
DB_BASE_DELAY_S = 0.2
DB_MAX_DELAY_S = 10.0


class Retry(Exception):
    """Raised by a runner's `predict` for a transient failure of its own (a remote service down, a
    resource busy): every job of the batch goes back to the queue and runs again after `delay`
    seconds (default: the policy's backoff for its attempt), or fails once its attempts are used up.
    The message is kept as the job's error if it fails."""

    def __init__(self, message: str = "the runner asked for a retry", *, delay: float | None = None) -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must be >= 0 seconds, got {delay}")
        super().__init__(message)
        self.delay = delay


def is_transient(exc: BaseException) -> bool:
    """A database or network error that may pass if the same statement is tried again."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a worker retries; built from `WorkerSettings.retry_policy()`."""

    max_attempts: int = 3
    # A released job waits backoff_s * 2 ** (attempt - 1), at most max_backoff_s.
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0
    db_attempts: int = DB_ATTEMPTS

    def releases(self, exc: BaseException) -> bool:
        """Whether `exc`, raised by a runner for a single job, sends the job back for a retry."""
        return isinstance(exc, Retry) or is_out_of_memory(exc)

    def exhausted(self, attempt: int) -> bool:
        """Whether a job on its `attempt`-th try has no try left."""
        return attempt >= self.max_attempts

    def delay(self, exc: BaseException, attempt: int) -> timedelta:
        """How long a job released by `exc` on its `attempt`-th try waits before it may run again."""
        if isinstance(exc, Retry) and exc.delay is not None:
            return timedelta(seconds=exc.delay)
        return timedelta(seconds=min(self.max_backoff_s, self.backoff_s * 2 ** max(attempt - 1, 0)))

    def with_retries(self, operation: Callable[[], T], *, what: str) -> T:
        return with_retries(operation, what=what, attempts=self.db_attempts)


def with_retries(
    operation: Callable[[], T],
    *,
    what: str,
    attempts: int = DB_ATTEMPTS,
    base_delay: float = DB_BASE_DELAY_S,
    max_delay: float = DB_MAX_DELAY_S,
) -> T:
    """Run `operation`, retrying transient errors up to `attempts` times (~40 s in all by default)."""
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(exc).__name__, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


__all__ = ["Retry", "RetryPolicy", "is_out_of_memory", "is_transient", "with_retries"]
