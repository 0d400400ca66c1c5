"""Shared fixtures: per-backend databases, a Redis database, and a real worker subprocess."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import build_tiny_models, create_postgres_database, drop_postgres_database, fresh_redis_db, release_redis_db
from tests.tiny_llm import build_tiny_causal_lm, build_tiny_qa, tiny_llm_specs

# Before any textq import reads settings: test models live in a per-session folder.
TEST_ROOT = Path(tempfile.mkdtemp(prefix="textq-tests-"))
TINY_LLM_SPECS = tiny_llm_specs(TEST_ROOT)
MODELS_FILE = TEST_ROOT / "models.json"
MODELS_FILE.write_text(
    json.dumps(
        [
            {
                "name": "tiny-classifier",
                "kind": "classify",
                "runner": "hf_classifier",
                "source": str(TEST_ROOT / "tiny-classifier"),
            },
            {
                "name": "tiny-seq2seq",
                "kind": "summarize",
                "runner": "hf_seq2seq",
                "source": str(TEST_ROOT / "tiny-seq2seq"),
                "options": {"max_new_tokens": 8},
            },
            {"name": "null", "kind": "classify", "runner": "null", "max_batch_size": 256},
            {
                "name": "echo",
                "kind": "classify",
                "runner": "tests.runners:EchoRunner",
                "max_wait_ms": 20,
                "options": {"log": str(TEST_ROOT / "echo.log")},
            },
            {
                "name": "slow",
                "kind": "classify",
                "runner": "tests.runners:EchoRunner",
                "max_batch_size": 4,
                "options": {"sleep_s": 1.0, "log": str(TEST_ROOT / "slow.log")},
            },
            {
                # Runs 1.5x the default lease (worker.settings lease_s): only lease renewal keeps it computed once.
                "name": "long",
                "kind": "classify",
                "runner": "tests.runners:EchoRunner",
                "max_batch_size": 1,
                "options": {"sleep_s": 15.0, "log": str(TEST_ROOT / "long.log")},
            },
            {
                "name": "poison",
                "kind": "classify",
                "runner": "tests.runners:PoisonRunner",
                "max_wait_ms": 50,
                "options": {"log": str(TEST_ROOT / "poison.log")},
            },
            {
                "name": "hungry",
                "kind": "classify",
                "runner": "tests.runners:MemoryHungryRunner",
                "max_wait_ms": 50,
                "options": {"max_fit": 4},
            },
            {"name": "failing", "kind": "classify", "runner": "tests.runners:FailingRunner", "max_wait_ms": 50},
            {"name": "cached", "kind": "classify", "runner": "tests.runners:EchoRunner", "max_wait_ms": 20,
             "result_cache": True, "options": {"log": str(TEST_ROOT / "cached.log")}},
            {"name": "cached-slow", "kind": "classify", "runner": "tests.runners:EchoRunner", "result_cache": True,
             "options": {"sleep_s": 1.0, "log": str(TEST_ROOT / "cached-slow.log")}},
            {"name": "threads", "kind": "classify", "runner": "tests.runners:ThreadReportingRunner"},
            *TINY_LLM_SPECS,
            {"name": "flaky", "kind": "classify", "runner": "tests.runners:FailOnceRunner", "max_wait_ms": 20,
             "max_batch_size": 1, "options": {"seen_log": str(TEST_ROOT / "flaky-seen.log")}},
            {
                "name": "retrying",
                "kind": "classify",
                "runner": "tests.runners:RetryingRunner",
                "options": {"retried_log": str(TEST_ROOT / "retrying-retried.log")},
            },
        ]
    )
)
os.environ["TEXTQ_MODELS_FILE"] = str(MODELS_FILE)


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    broker_url: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "TEXTQ_DATABASE_URL": self.database_url,
            "TEXTQ_BROKER_URL": self.broker_url,
            "TEXTQ_MODELS_FILE": str(MODELS_FILE),
            "TEXTQ_REPUBLISH_AFTER_S": "2",
            "TEXTQ_SWEEP_INTERVAL_S": "0.5",
            "TEXTQ_LEASE_S": "20",
            "TOKENIZERS_PARALLELISM": "false",
            "TEXTQ_WORKER_MODELS": models_without_gguf(),
        }


def models_without_gguf() -> str:
    """Every model but the GGUF LLMs (minutes to convert the first time): tests/test_llm_slow.py serves those."""
    from producer.registry import load_registry

    return ",".join(s.name for s in load_registry(MODELS_FILE).specs() if not (s.source or "").startswith("gguf:"))


@pytest.fixture(scope="session", autouse=True)
def _cleanup_test_root() -> Iterator[None]:
    yield
    shutil.rmtree(TEST_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    if not (TEST_ROOT / "tiny-classifier").exists():
        build_tiny_models(TEST_ROOT)
        build_tiny_causal_lm(TEST_ROOT / "tiny-llm")
        build_tiny_qa(TEST_ROOT / "tiny-qa", tokenizer_dir=TEST_ROOT / "tiny-classifier")
    return TEST_ROOT


@contextmanager
def new_backend(kind: str, name: str) -> Iterator[Backend]:
    """A migrated, empty database of `kind` and a Redis database, both of this backend's own."""
    from db import upgrade
    from db.engine import shared_engine

    broker_url = fresh_redis_db()
    try:
        if kind == "sqlite":
            url = f"sqlite:///{TEST_ROOT / f'{name}-{uuid.uuid4().hex[:8]}.db'}"
            upgrade(url)
            yield Backend(kind, url, broker_url)
            return
        url, db_name = create_postgres_database()
        try:
            upgrade(url)
            yield Backend(kind, url, broker_url)
        finally:
            shared_engine.cache_clear()
            drop_postgres_database(db_name)
    finally:
        release_redis_db(broker_url)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tiny_models: Path) -> Iterator[Backend]:
    """The shared backend of each kind, served by the shared `worker`."""
    with new_backend(request.param, "shared") as b:
        yield b


@pytest.fixture()
def isolated_backend(backend: Backend) -> Iterator[Backend]:
    """A backend of the same kind that no other worker (nor its sweeper) can see."""
    with new_backend(backend.name, "isolated") as b:
        yield b


@pytest.fixture(scope="session")
def worker(backend: Backend) -> Iterator[object]:
    """One real worker process per backend serving every model, shared by the end-to-end tests."""
    from producer.worker_process import WorkerProcess

    process = WorkerProcess(env=backend.env, log_path=TEST_ROOT / f"worker-{backend.name}.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture()
def client(backend: Backend) -> Iterator[object]:
    from producer import Client

    with Client(database_url=backend.database_url, broker_url=backend.broker_url) as c:
        yield c
