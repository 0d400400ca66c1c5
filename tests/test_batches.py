"""Batches over HTTP with the official `openai` client, from Python and from the CLI, against a real
gateway (uvicorn), worker, Redis and database."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import event, func, select

from db.engine import session_factory
from db.models import Job
from producer import Client
from producer.batch_errors import BatchStateError
from producer.batch_settings import BatchSettings
from producer.batches import Batches
from producer.gateway import GatewaySettings, create_app
from producer.worker_process import WorkerProcess
from tests.conftest import Backend
from tests.helpers import unique_text, wait_until
from tests.live_gateway import serve
from tests.test_cli import textq

KEY = "batch-key-" + uuid.uuid4().hex
MAX_FILE_BYTES = 256 * 1024


@pytest.fixture()
def oai(client: Client, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    """The official openai client against a live gateway on a free port."""
    monkeypatch.setenv("TEXTQ_BATCH_DRIVE_INTERVAL_S", "0.2")
    monkeypatch.setenv("TEXTQ_BATCH_MAX_FILE_BYTES", str(MAX_FILE_BYTES))
    with serve(create_app(client, GatewaySettings(keys=[KEY]))) as base_url:
        yield openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=30)


def line(custom_id: str, body: dict[str, Any], url: str = "/v1/jobs") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def run_batch(oai: openai.OpenAI, content: bytes, timeout: float = 90, **extra: Any) -> Any:
    upload = oai.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    batch = oai.batches.create(input_file_id=upload.id, endpoint="/v1/jobs", completion_window="24h",  # type: ignore[arg-type]
                               extra_body=extra or None)
    wait_until(lambda: oai.batches.retrieve(batch.id).status in ("completed", "failed", "expired", "cancelled"),
               timeout=timeout, what=f"batch {batch.id} to end")
    return oai.batches.retrieve(batch.id)


def results_of(oai: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in oai.files.content(file_id).content.splitlines()]


def batch_rows(backend: Backend, batch_id: str) -> int:
    with session_factory(backend.database_url)() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.batch_id == batch_id)) or 0)


def test_openai_client_round_trip(worker: WorkerProcess, oai: openai.OpenAI, backend: Backend) -> None:
    texts = {f"req-{i}": unique_text("b") for i in range(40)}
    content = jsonl([line(cid, {"text": text, "model": "echo"}) for cid, text in texts.items()])
    upload = oai.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
    assert (upload.bytes, upload.purpose, upload.filename) == (len(content), "batch", "requests.jsonl")
    assert oai.files.retrieve(upload.id).id == upload.id
    assert oai.files.content(upload.id).content == content

    batch = oai.batches.create(input_file_id=upload.id, endpoint="/v1/jobs", completion_window="24h",  # type: ignore[arg-type]
                               metadata={"project": "reviews"})
    assert batch.status == "validating" and batch.metadata == {"project": "reviews"}
    wait_until(lambda: oai.batches.retrieve(batch.id).status == "completed", timeout=90, what="the batch to complete")
    done = oai.batches.retrieve(batch.id)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (40, 40, 0)
    assert done.error_file_id is None and done.completed_at and done.in_progress_at and done.finalizing_at

    outputs = results_of(oai, done.output_file_id)
    assert sorted(o["custom_id"] for o in outputs) == sorted(texts)
    for out in outputs:
        assert out["error"] is None and out["response"]["status_code"] == 200
        job = out["response"]["body"]
        assert job["status"] == "succeeded" and job["output"]["label"] == texts[out["custom_id"]].upper()
        assert job["priority"] == 8  # bulk work runs after interactive jobs by default
    assert batch.id in [b.id for b in oai.batches.list(limit=100)]
    assert oai.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError, match="no file with id"):
        oai.files.retrieve(upload.id)


def test_a_file_with_bad_lines_is_refused_whole(oai: openai.OpenAI, backend: Backend) -> None:
    content = jsonl([
        line("ok-1", {"text": "fine", "model": "echo"}),
        b"{not json",
        line("ok-1", {"text": "again", "model": "echo"}),
        line("chat", {"text": "hi"}, url="/v1/chat/completions"),
        line("empty", {"text": "  ", "model": "echo"}),
        line("prio", {"text": "x", "priority": 0}),
    ])
    failed = run_batch(oai, content)
    assert failed.status == "failed" and failed.failed_at
    errors = {e.line: e for e in failed.errors.data}
    assert set(errors) == {2, 3, 4, 5, 6}
    assert errors[2].code == "invalid_json" and "line 2" in errors[2].message
    assert errors[3].code == "duplicate_custom_id" and "'ok-1'" in errors[3].message and "line 1" in errors[3].message
    assert errors[4].code == "invalid_url" and "/v1/chat/completions" in errors[4].message
    assert errors[5].param == "body.text" and "must not be empty" in errors[5].message
    assert errors[6].param == "body.priority"
    assert batch_rows(backend, failed.id) == 0  # nothing enqueued


def test_skipping_bad_lines_puts_every_line_in_one_file(worker: WorkerProcess, oai: openai.OpenAI) -> None:
    content = jsonl([
        line("good", {"text": unique_text("g"), "model": "echo"}),
        b"[1, 2]",
        line("bad-body", {"text": "x", "labels": ["a", "a"], "model": "zero-shot"}),
        line("fails", {"text": "BAD input", "model": "failing"}),
        line("good-2", {"text": unique_text("g"), "model": "echo"}),
    ])
    done = run_batch(oai, content, skip_invalid_lines=True)
    assert done.status == "completed"
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (5, 2, 3)
    outputs, errors = results_of(oai, done.output_file_id), results_of(oai, done.error_file_id)
    assert sorted(o["custom_id"] for o in outputs) == ["good", "good-2"]
    by_id = {e["custom_id"]: e for e in errors}
    assert len(errors) == 3 and set(by_id) == {"bad-body", "fails", None}  # the non-object line has no custom_id
    assert by_id[None]["error"]["code"] == "invalid_request" and "line 2" in by_id[None]["error"]["message"]
    assert by_id["bad-body"]["response"]["status_code"] == 422 and "duplicated" in by_id["bad-body"]["error"]["message"]
    assert by_id["fails"]["error"]["code"] == "job_failed"
    assert by_id["fails"]["response"]["body"]["error_message"] == "model cannot handle this input"


def test_bad_files_and_requests_are_clear_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="file is empty"):
        oai.files.create(file=("empty.jsonl", io.BytesIO(b"\n \n")), purpose="batch")
    with pytest.raises(openai.APIStatusError, match="larger than") as too_large:
        oai.files.create(file=("big.jsonl", io.BytesIO(b"x" * (MAX_FILE_BYTES + 1))), purpose="batch")
    assert too_large.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="purpose must be one of batch"):
        oai.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError, match="no file with id 'file-nope'"):
        oai.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError, match="no file with id 'file-nope'"):
        oai.batches.create(input_file_id="file-nope", endpoint="/v1/jobs", completion_window="24h")  # type: ignore[arg-type]
    upload = oai.files.create(file=("a.jsonl", io.BytesIO(jsonl([line("a", {"text": "a"})]))), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint: textq batches serve /v1/jobs only"):
        oai.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window: must be a number and a unit"):
        oai.batches.create(input_file_id=upload.id, endpoint="/v1/jobs", completion_window="1 day")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="no batch with id 'batch_nope'"):
        oai.batches.retrieve("batch_nope")


def test_cancel_a_running_batch_and_not_a_finished_one(worker: WorkerProcess, oai: openai.OpenAI) -> None:
    content = jsonl([line(f"s-{i}", {"text": unique_text("slow"), "model": "slow"}) for i in range(24)])
    upload = oai.files.create(file=("slow.jsonl", io.BytesIO(content)), purpose="batch")
    batch = oai.batches.create(input_file_id=upload.id, endpoint="/v1/jobs", completion_window="24h")  # type: ignore[arg-type]
    wait_until(lambda: oai.batches.retrieve(batch.id).status == "in_progress", what="the batch to start")
    assert oai.batches.cancel(batch.id).status in ("cancelling", "cancelled", "finalizing")
    wait_until(lambda: oai.batches.retrieve(batch.id).status == "cancelled", what="the batch to be cancelled")
    done = oai.batches.retrieve(batch.id)
    counts = done.request_counts
    assert counts.total == 24 and counts.completed + counts.failed == 24 and counts.failed > 0
    lines = results_of(oai, done.output_file_id) + results_of(oai, done.error_file_id)
    assert sorted(x["custom_id"] for x in lines) == sorted(f"s-{i}" for i in range(24))
    assert {x["error"]["code"] for x in lines if x["error"]} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError, match="is cancelled; only a validating or in_progress batch can be cancelled"):
        oai.batches.cancel(batch.id)


def test_expiry_ends_unfinished_jobs_expired(worker: WorkerProcess, client: Client) -> None:
    lines = [line(f"e-{i}", {"text": unique_text("slow"), "model": "slow"}) for i in range(40)]
    batch = client.submit_batch(lines, completion_window="2s", priority=9)
    done = client.batches.wait(batch.id, timeout=60, poll_interval=0.2)
    assert done.status == "expired" and done.expired_at
    assert done.request_counts.total == 40 and done.request_counts.completed + done.request_counts.failed == 40
    results = list(client.batches.results(batch.id))
    assert sorted(r["custom_id"] for r in results) == sorted(x["custom_id"] for x in lines)
    assert any(r["error"] and r["error"]["code"] == "batch_expired" for r in results)


def test_python_client_submits_waits_and_reads_results(worker: WorkerProcess, client: Client, tmp_path: Any) -> None:
    texts = {f"p-{i}": unique_text("py") for i in range(10)}
    path = tmp_path / "batch.jsonl"
    path.write_bytes(jsonl([line(cid, {"text": t, "model": "echo"}) for cid, t in texts.items()]))
    batch = client.submit_batch(path, priority=2)
    assert batch.status == "in_progress" and batch.priority == 2 and batch.request_counts.total == 10
    seen: list[tuple[int, int]] = []  # what a progress bar shows (textq batch submit --wait draws one)
    done = client.batches.wait(batch.id, timeout=60, poll_interval=0.2,
                               on_progress=lambda v: seen.append((v.request_counts.completed, v.request_counts.total)))
    assert done.status == "completed"
    assert seen[-1] == (10, 10) and [c for c, _ in seen] == sorted(c for c, _ in seen)
    labels = {r["custom_id"]: r["response"]["body"]["output"]["label"] for r in client.batches.results(batch.id)}
    assert labels == {cid: t.upper() for cid, t in texts.items()}
    with pytest.raises(BatchStateError, match="is completed"):
        client.batches.cancel(batch.id)


def test_cli_submit_wait_get_list_results(worker: WorkerProcess, backend: Backend, tmp_path: Any) -> None:
    path = tmp_path / "cli.jsonl"
    path.write_bytes(jsonl([line(f"c-{i}", {"text": unique_text("cli"), "model": "echo"}) for i in range(5)]))
    submitted = textq("batch", "submit", str(path), "--wait", "--json", env=backend.env)
    assert submitted.returncode == 0, submitted.stderr
    view = json.loads(submitted.stdout)
    assert view["status"] == "completed" and view["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    listed = textq("batch", "list", "--limit", "100", env=backend.env)
    assert view["id"] in listed.stdout
    results = textq("batch", "results", view["id"], env=backend.env)
    assert sorted(json.loads(x)["custom_id"] for x in results.stdout.splitlines()) == [f"c-{i}" for i in range(5)]
    cancelled = textq("batch", "cancel", view["id"], env=backend.env)
    assert cancelled.returncode == 1 and "is completed" in cancelled.stderr and "Traceback" not in cancelled.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([line("x", {"text": ""})]))
    refused = textq("batch", "submit", str(bad), env=backend.env)
    assert refused.returncode == 1 and "line 1 (custom_id 'x'): body.text: must not be empty" in refused.stdout


def test_a_polled_batch_is_counted_once_per_moment_and_an_ended_one_never(isolated_backend: Backend) -> None:
    """Counting reads every job of the batch: pollers share a recent count instead of one each."""
    counted: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "GROUP BY jobs.status" in statement:
            counted.append(statement)

    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        batches = Batches(client, BatchSettings(counts_ttl_s=60))
        engine = batches.sessions.kw["bind"]
        event.listen(engine, "before_cursor_execute", seen)
        try:
            batch = batches.submit([line(f"q-{i}", {"text": unique_text(), "model": "echo"}) for i in range(3)])
            views = [batches.get(batch.id) for _ in range(10)] + [batches.list_batches().data[0] for _ in range(10)]
            assert len(counted) == 1
            assert {(v.status, v.request_counts.total, v.request_counts.completed) for v in views} == {("in_progress", 3, 0)}
            assert batches.cancel(batch.id).request_counts.failed == 3  # ended: its row's counts
            assert batches.get(batch.id).status == "cancelled" and len(counted) == 1
        finally:
            event.remove(engine, "before_cursor_execute", seen)
