"""What a worker makes sure of before it says ready: its database answers, and its limits are
those its producers validated with. Models load after these (worker.runtime)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import redis
from sqlalchemy.orm import Session, sessionmaker

from producer.errors import TextqError
from producer.health import database_problem
from producer.limits import Limits, recorded_limits
from producer.registry import ModelSpec

log = logging.getLogger(__name__)

# Seconds between tries while the database does not answer at start.
DATABASE_RETRY_S = 1.0


class WorkerStartError(TextqError):
    """The worker cannot serve (its database never answered, a served model did not load): it
    exits non-zero with this message instead of saying ready. Fix what the message names."""


def model_load_error(spec: ModelSpec, exc: Exception) -> WorkerStartError:
    """The error a worker stops with when `spec` did not load, naming the model and its source."""
    source = spec.source or "none"
    local = spec.source is not None and spec.source.startswith(("/", "./", "../", "~"))
    missing = f"; {source} does not exist" if local and not Path(source).expanduser().exists() else ""
    return WorkerStartError(
        f"model {spec.name!r} (runner {spec.runner}, source {source}) did not load{missing}: {type(exc).__name__}: {exc}"
    )


def wait_for_database(sessions: sessionmaker[Session], url: str, *, wait_s: float) -> None:
    """Return once the jobs table answers; WorkerStartError if it still does not after `wait_s`."""
    deadline = time.monotonic() + wait_s
    tries = 0
    while (problem := database_problem(sessions, url)) is not None:
        tries += 1
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerStartError(f"{problem} (gave up after {tries} tries in {wait_s:g}s, TEXTQ_DATABASE_WAIT_S)")
        log.warning("%s; try %d, trying again for up to %.0fs more", problem, tries, left)
        time.sleep(min(DATABASE_RETRY_S, left))


def check_limits(broker: redis.Redis | None, limits: Limits) -> None:
    """Log whether this worker's limits are the producers' (as the last Client recorded them).

    A mismatch is logged as an error, not fatal: the record may be a stale producer's in a rolling
    deploy, and a job over this worker's limits fails alone with an error naming the limit.
    """
    theirs = recorded_limits(broker)
    if theirs is None:
        log.info("no producer has recorded its limits on the broker yet: nothing to compare")
    elif theirs != limits:
        log.error(
            "this worker's limits differ from the producers' (%s; worker vs producer): jobs a producer "
            "accepts may fail here. Give both the same TEXTQ_MAX_* settings",
            "; ".join(limits.differences(theirs)),
        )
    else:
        log.info("limits match the producers': %s", limits)


__all__ = ["WorkerStartError", "check_limits", "model_load_error", "wait_for_database"]
