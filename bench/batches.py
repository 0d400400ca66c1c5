"""A batch end to end through the HTTP gateway with the official openai client: upload, validate,
enqueue, compute, finalize, download. Reports lines/s, the gateway's peak memory (RSS) and the
file's size; for a real model, its ratio to the raw model over the same lines, timed in this
process just before and just after the batch (the same machine load).

    python -m bench.batches --n 1000000 --models null,sentiment --sentiment-n 5000 --json bench/results/batches.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import openai

from bench.environment import BenchEnvironment
from bench.rss import PeakRSS
from bench.texts import short_texts
from tests.live_gateway import gateway_process

KEY = "bench-" + uuid.uuid4().hex


@dataclass
class BatchRow:
    model: str
    lines: int
    upload_s: float
    validate_enqueue_s: float  # upload to in_progress: every line validated (enqueueing goes on after)
    total_s: float
    lines_per_s: float
    gateway_peak_rss_mb: float
    file_mb: float
    raw_lines_per_s: float | None = None  # the mean of the raw runs just before and just after the batch
    raw_runs: list[float] | None = None
    x_raw: float | None = None


def batch_texts(n: int) -> list[str]:
    """The texts of the batch's `n` lines (and of the raw run it is compared with)."""
    texts = short_texts(min(n, 10_000))
    return [f"{texts[i % len(texts)]} #{i}" for i in range(n)]


def write_file(path: Path, model: str, texts: list[str]) -> None:
    with path.open("w") as handle:
        for i, text in enumerate(texts):
            body = {"text": text, "model": model}
            handle.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/jobs", "body": body}) + "\n")


def run_batch(oai: openai.OpenAI, path: Path, model: str, n: int, gateway_pid: int) -> BatchRow:
    with PeakRSS(gateway_pid, interval_s=0.05, children=False) as rss:
        started = time.perf_counter()
        with path.open("rb") as handle:
            upload = oai.files.create(file=(path.name, handle), purpose="batch")
        uploaded = time.perf_counter()
        batch = oai.batches.create(input_file_id=upload.id, endpoint="/v1/jobs", completion_window="24h")  # type: ignore[arg-type]
        enqueued = None
        while (batch := oai.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
            if enqueued is None and batch.status != "validating":
                enqueued = time.perf_counter()
            time.sleep(0.2)
        if batch.status != "completed" or batch.output_file_id is None:
            raise RuntimeError(f"batch ended {batch.status}: {batch.errors}")
        lines = 0
        with oai.files.with_streaming_response.content(batch.output_file_id) as response:
            for chunk in response.iter_bytes():
                lines += chunk.count(b"\n")
        total = time.perf_counter() - started
    assert lines == n, f"{lines} output lines for {n} requests"
    return BatchRow(model, n, round(uploaded - started, 2), round((enqueued or uploaded) - uploaded, 2), round(total, 2),
                    round(n / total, 1), round(rss.peak_mb, 1), round(path.stat().st_size / 2**20, 1))


def raw_lines_per_s(model: str, texts: list[str]) -> float:
    """The runner in this process over the same texts, each once, in batches of its max_batch_size."""
    from bench.measure import RawModel
    from producer.registry import load_registry

    raw = RawModel(load_registry(None).get(model), texts)
    try:
        return raw.run(min_s=0, min_items=len(texts)).jobs_per_s
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="lines in the null model's batch")
    parser.add_argument("--sentiment-n", type=int, default=5_000, help="lines in the sentiment batch")
    parser.add_argument("--models", default="null,sentiment")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from producer.worker_process import WorkerProcess

    rows = []
    for model in args.models.split(","):
        n = args.n if model == "null" else args.sentiment_n
        with BenchEnvironment(args.database) as env, tempfile.TemporaryDirectory(prefix="textq-bench-batch-") as tmp:
            texts = batch_texts(n)
            path = Path(tmp) / f"{model}.jsonl"
            write_file(path, model, texts)
            raw = [] if model == "null" else [raw_lines_per_s(model, texts)]
            gateway_env = {**env.env, "TEXTQ_API_KEYS": KEY, "TEXTQ_BATCH_DRIVE_INTERVAL_S": "0.5"}
            with WorkerProcess(env=env.env, models=[model]), \
                    gateway_process(gateway_env, Path(tmp) / "gateway.log") as (base_url, gateway):
                oai = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, timeout=600, max_retries=0)
                row = run_batch(oai, path, model, n, gateway.pid)
            if raw:  # before and after: a shared machine's load changes, and both sides see it alike
                raw.append(raw_lines_per_s(model, texts))
                row.raw_runs = [round(r, 1) for r in raw]
                row.raw_lines_per_s = round(sum(raw) / len(raw), 1)
                row.x_raw = round(row.lines_per_s / row.raw_lines_per_s, 3)
            rows.append(row)
            print(json.dumps(asdict(row)), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
