"""Worker subprocesses: a textq worker for one model, and the naive baseline's Celery worker."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from producer.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def textq_worker(env: dict[str, str], model: str, *, log_path: Path) -> WorkerProcess:
    return WorkerProcess(env=env, models=[model], log_path=log_path, name=f"bench-{model}")


def naive_worker(env: dict[str, str], model: str, *, pool: str, concurrency: int, log_path: Path) -> WorkerProcess:
    """`celery -A bench.naive worker` with the model loaded once, at start-up."""
    from bench.naive import QUEUE

    process = WorkerProcess(env={**env, "BENCH_NAIVE_MODEL": model,
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
                            log_path=log_path)
    process.args = [sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "-P", pool, "-Q", QUEUE,
                    "--loglevel", "INFO", "-n", f"bench-naive-{os.getpid()}-{time.monotonic_ns()}@%h"]
    if pool != "solo":
        process.args += ["-c", str(concurrency)]
    return process
