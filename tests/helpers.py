"""Small helpers shared by tests: reading the jobs table and the test runners' logs."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from db import store
from db.engine import session_factory
from db.models import Job
from producer.broker import Publisher
from producer.settings import ProducerSettings
from tests.conftest import TEST_ROOT, Backend


def rows(backend: Backend, ids: Sequence[uuid.UUID]) -> list[Job]:
    with session_factory(backend.database_url)() as session:
        found = {j.id: j for j in store.get_jobs(session, ids=list(ids))}
    return [found[i] for i in ids]


def insert_raw_job(backend: Backend, *, model: str, task: str, input: Any) -> uuid.UUID:
    """A job row written around the producer's validation, as a buggy or hostile client could."""
    with session_factory(backend.database_url).begin() as session:
        return store.create_jobs(session, jobs=[store.NewJob(model=model, task=task, input=input)])[0]


def publisher(backend: Backend) -> Publisher:
    return Publisher(ProducerSettings(broker_url=backend.broker_url))


def computed_texts(model: str) -> Counter[str]:
    """How many times the test runner of `model` computed each text (from its log file)."""
    log = TEST_ROOT / f"{model}.log"
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def unique_text(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


__all__ = ["computed_texts", "insert_raw_job", "publisher", "rows", "unique_text", "wait_until"]
