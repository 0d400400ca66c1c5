"""Thin Celery tasks: decode the message, hand its jobs to the runtime, return (ack)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from producer.contract import RUN_JOBS_TASK, JobMessage
from worker.app import app
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name=RUN_JOBS_TASK)
def run_jobs(body: Any) -> int:
    """Hand the jobs named in `body` ({"model": ..., "job_ids": [...]}) to the model's batcher; returns how many."""
    try:
        message = JobMessage.model_validate(body)
    except ValidationError as exc:
        # Nothing in it names a valid job to fail; acking drops only the bad message.
        log.error("dropped malformed message: %s", exc)
        return 0
    get_runtime().hand_in(message.model, message.job_ids)
    return len(message.job_ids)
