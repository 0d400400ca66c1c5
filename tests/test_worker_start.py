"""A worker says ready only when it can serve: real worker processes whose database is unreachable,
whose model cannot load, or whose limits differ from the producers'; and `textq worker --check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import Client
from producer.limits import Limits, record_limits, recorded_limits
from producer.worker_process import READY_MARK, WorkerProcess, worker_environment
from tests.conftest import TEST_ROOT, Backend, new_backend
from tests.faults.conftest import free_port
from tests.test_cli import textq

# A worker that cannot serve must be gone well within this (its database wait is 2 s in these tests).
EXIT_WITHIN_S = 90


@pytest.fixture(scope="module")
def sqlite_backend() -> Iterator[Backend]:
    """One backend for the module: each test run holds few of the machine's shared Redis databases."""
    with new_backend("sqlite", "start") as backend:
        yield backend


def _failed_start(worker: WorkerProcess) -> tuple[str, float]:
    """Start a worker that must not get ready; its log and how long it took to exit non-zero."""
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="worker exited with 1"):
        worker.start(timeout=EXIT_WITHIN_S)
    return worker.log(), time.monotonic() - started


def test_a_model_that_cannot_load_stops_the_worker_once_with_a_clear_message(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model-dir"
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([
        {"name": "echo", "kind": "classify", "runner": "tests.runners:EchoRunner",
         "options": {"log": str(tmp_path / "echo.log")}},
        {"name": "broken", "kind": "classify", "runner": "hf_classifier", "source": str(missing)},
    ]))
    env = {**sqlite_backend.env, "TEXTQ_MODELS_FILE": str(models_file)}
    log, took = _failed_start(WorkerProcess(env=env, models=["echo", "broken"], name="broken"))
    assert READY_MARK not in log
    named = f"model 'broken' (runner hf_classifier, source {missing}) did not load; {missing} does not exist"
    assert f"worker not started: {named}" in log
    assert log.count("loading model broken") == 1, log  # no reload loop
    assert log.count("loading model echo") == 1, log
    assert "Traceback" not in log
    print(f"\nworker with an unloadable model exited after {took:.1f}s")


def test_a_worker_whose_database_is_unreachable_never_says_ready(sqlite_backend: Backend) -> None:
    url = f"postgresql+psycopg://textq:s3cret@127.0.0.1:{free_port()}/textq"  # nothing listens there
    env = {**sqlite_backend.env, "TEXTQ_DATABASE_URL": url, "TEXTQ_DATABASE_WAIT_S": "2"}
    log, took = _failed_start(WorkerProcess(env=env, models=["echo"], name="nodb"))
    redacted = url.replace("s3cret", "***")
    assert READY_MARK not in log
    assert f"database at {redacted} is unreachable or not ready" in log  # while it retries
    assert "worker not started:" in log and "gave up after" in log and "TEXTQ_DATABASE_WAIT_S" in log
    assert "s3cret" not in log
    assert "loading model" not in log  # no model loads before the database answers
    assert "Traceback" not in log
    assert took < 60, took
    print(f"\nworker with an unreachable database exited after {took:.1f}s")


def test_an_unknown_served_model_stops_the_worker_at_start(sqlite_backend: Backend) -> None:
    log, _ = _failed_start(WorkerProcess(env=sqlite_backend.env, models=["no-such-model"], name="unknown"))
    assert "worker not started: TEXTQ_WORKER_MODELS names unknown models ['no-such-model']" in log
    assert "Traceback" not in log


def test_a_client_records_its_limits_and_a_worker_reports_a_mismatch(sqlite_backend: Backend) -> None:
    broker = redis.Redis.from_url(sqlite_backend.broker_url)
    with Client(database_url=sqlite_backend.database_url, broker_url=sqlite_backend.broker_url) as client:
        assert recorded_limits(broker) == client.settings.limits
    # A producer that accepts longer texts than the worker will: the worker says so at start.
    record_limits(broker, Limits(max_text_chars=50_000))
    with WorkerProcess(env=sqlite_backend.env, models=["echo"], name="limits") as worker:
        log = worker.log()
    assert "this worker's limits differ from the producers' (max_text_chars: 20000 vs 50000;" in log
    assert "limits match" not in log


def test_importing_the_worker_app_has_no_side_effects() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    env.update(TEXTQ_WORKER_MODELS="no-such-model", TEXTQ_MODELS_FILE=str(TEST_ROOT / "missing.json"))
    code = "import os, worker.app; print(os.environ.get('GOMP_SPINCOUNT'))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr  # neither the model list nor the models file is read
    assert result.stdout.strip() == "None"


def test_only_a_worker_that_serves_only_generation_models_keeps_openmp_spinning(tmp_path: Path) -> None:
    def spin(base: dict[str, str], models: list[str] | None = None) -> str | None:
        return worker_environment(base, models=models).get("GOMP_SPINCOUNT")

    assert spin({}, ["abstractive", "translate", "answer"]) is None  # GNU OpenMP's default
    assert spin({"TEXTQ_WORKER_MODELS": "answer"}) is None
    assert spin({}, ["sentiment", "abstractive"]) == spin({}) == spin({}, ["embed"]) == "10000"
    assert spin({"GOMP_SPINCOUNT": "7"}, ["abstractive"]) == "7"  # a value already set wins
    models = tmp_path / "models.json"
    models.write_text(json.dumps([{"name": "t5", "kind": "summarize", "runner": "hf_seq2seq", "source": "x"}]))
    assert spin({"TEXTQ_MODELS_FILE": str(models)}, ["t5"]) is None
    assert spin({"TEXTQ_MODELS_FILE": str(tmp_path / "missing.json")}, ["abstractive"]) == "10000"


def test_worker_check_names_an_unreachable_broker(sqlite_backend: Backend) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = textq("worker", "--check", env={**sqlite_backend.env, "TEXTQ_BROKER_URL": url})
    assert result.returncode == 1
    assert f"broker at {url} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_check_names_an_unreachable_database(sqlite_backend: Backend) -> None:
    url = f"postgresql+psycopg://textq:s3cret@127.0.0.1:{free_port()}/textq"
    result = textq("worker", "--check", env={**sqlite_backend.env, "TEXTQ_DATABASE_URL": url})
    assert result.returncode == 1
    assert f"database at {url.replace('s3cret', '***')} is unreachable or not ready" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_check_says_when_no_worker_answers(sqlite_backend: Backend) -> None:
    result = textq("worker", "--check", env=sqlite_backend.env)
    assert result.returncode == 1
    assert "no worker on this host" in result.stderr
    assert "the broker and database answer" in result.stderr
