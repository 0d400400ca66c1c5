"""The `textq` command line, run as a real subprocess against the real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import unique_text

TEXTQ = [sys.executable, "-c", "from producer.cli import main; main()"]


def textq(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TEXTQ, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    "command",
    [[], ["worker"], ["submit"], ["get"], ["wait"], ["cancel"], ["models"], ["db"], ["db", "upgrade"], ["demo"], ["console"]],
)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = textq(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: " in result.stdout
    assert len(result.stdout.splitlines()) > 4


def test_submit_wait_get_round_trip(worker: WorkerProcess, backend: Backend) -> None:
    submitted = textq("submit", "I loved it", "--model", "sentiment", "--wait", "60", "--json", env=backend.env)
    assert submitted.returncode == 0, submitted.stderr
    view = json.loads(submitted.stdout)
    assert view["status"] == "succeeded"
    assert view["output"]["label"] == "positive"
    shown = textq("get", view["id"], env=backend.env)
    assert f"id:       {view['id']}" in shown.stdout
    assert "status:   succeeded" in shown.stdout
    waited = textq("wait", view["id"], "--json", env=backend.env)
    assert json.loads(waited.stdout)["id"] == view["id"]


def test_zero_shot_and_summarize_from_the_cli(worker: WorkerProcess, backend: Backend) -> None:
    zs = textq("submit", "The striker scored twice", "--labels", "sports,politics", "--wait", "60", "--json", env=backend.env)
    assert json.loads(zs.stdout)["output"]["label"] == "sports"
    text = "Cats sleep a lot. Dogs like walks. Birds can fly. Fish swim in water."
    sm = textq("submit", text, "--summarize", "--max-sentences", "2", "--wait", "60", "--json", env=backend.env)
    assert len(json.loads(sm.stdout)["output"]["sentences"]) == 2


def test_bulk_file_submit(worker: WorkerProcess, backend: Backend, tmp_path: Path) -> None:
    lines = [json.dumps({"text": unique_text("cli-bulk"), "model": "echo"}) for _ in range(100)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines))
    result = textq("submit", "--file", str(tmp_path / "jobs.jsonl"), "--wait", "60", env=backend.env)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["succeeded"] * 100


def test_bad_input_is_a_clear_error_with_nonzero_exit(backend: Backend) -> None:
    for args, message in (
        (["submit", "   "], "text: must not be empty"),
        (["submit", "ok", "--model", "nope"], "unknown model 'nope'"),
        (["submit", "ok", "--labels", "a,a"], "duplicated"),
        (["get", "not-a-uuid"], "is not a job id"),
        (["get", "00000000-0000-0000-0000-000000000000"], "no job with id"),
    ):
        result = textq(*args, env=backend.env)
        assert result.returncode == 1, (args, result.stdout)
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_db_upgrade_is_idempotent(backend: Backend) -> None:
    result = textq("db", "upgrade", env=backend.env)
    assert result.returncode == 0, result.stderr
    assert "is at head" in result.stdout


BROKEN_MODELS_FILES = [
    ("missing", None, "cannot be read: No such file or directory"),
    ("invalid-json", '[{"name": "m",', "is not valid JSON: Expecting"),
    ("unknown-field", '[{"name": "m", "kind": "classify", "runner": "null", "colour": "red"}]',
     "entry 0 ('m'): colour: Extra inputs are not permitted"),
    ("bad-name", '[{"name": "Bad Name", "kind": "classify", "runner": "null"}]',
     "entry 0 ('Bad Name'): name: String should match pattern"),
    ("not-a-list", '{"name": "m"}', "the file: spec: Input should be a valid list"),
]


@pytest.mark.parametrize(("content", "problem"), [b[1:] for b in BROKEN_MODELS_FILES], ids=[b[0] for b in BROKEN_MODELS_FILES])
def test_a_broken_models_file_is_one_clear_error_in_every_command(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "models.json"
    if content is not None:
        path.write_text(content)
    for command in (["models"], ["submit", "hello"], ["worker"]):
        result = textq(*command, env={"TEXTQ_MODELS_FILE": str(path)})
        assert result.returncode == 1, (command, result.stdout)
        assert result.stderr.startswith(f"Error: models file {path} (TEXTQ_MODELS_FILE)"), (command, result.stderr)
        assert problem in result.stderr, (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)  # no traceback


def test_a_bad_line_in_a_bulk_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "jobs.jsonl").write_text('{"text": "fine", "model": "echo"}\n{"text": oops}\n')
    result = textq("submit", "--file", str(tmp_path / "jobs.jsonl"))
    assert result.returncode == 1
    assert f"{tmp_path / 'jobs.jsonl'} line 2 is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
