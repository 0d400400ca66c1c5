"""The textq worker's command line and environment (one place, used by `textq worker` and here),
and `WorkerProcess`: a worker as a child process for `textq demo`, tests and benchmarks.

It runs `python -m celery -A worker.app worker` in a fresh interpreter, so the caller never imports
torch and the models load in the child only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

READY_MARK = " ready."
# Read by GNU OpenMP when torch loads it: idle threads sleep sooner and leave the cores to the consumer and database.
WORKER_OPENMP_ENV = {"GOMP_SPINCOUNT": "10000"}
# Runners that generate token by token: each token is many small parallel regions with Python between
# them, and threads that sleep after 10,000 spins are woken for each one. A worker that serves only such
# models keeps GNU OpenMP's default spinning (SmolLM2 raw generate on 2 cores: 63 vs 51 tokens/s).
GENERATION_RUNNERS = frozenset({"hf_causal_lm", "hf_seq2seq"})


def worker_command(*, pool: str = "threads", loglevel: str = "INFO", extra: Sequence[str] = ()) -> list[str]:
    """The argv that runs a textq worker (Celery's worker program on textq's app)."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", pool, "--loglevel", loglevel, *extra]


def worker_environment(base: Mapping[str, str], *, models: Sequence[str] | None = None) -> dict[str, str]:
    """The environment of a textq worker process: `base` (whose own OpenMP settings win), serving
    `models` (default: TEXTQ_WORKER_MODELS of `base`, else all)."""
    env = {**({} if _serves_only_generation(base, models) else WORKER_OPENMP_ENV), **base}
    if models:
        env["TEXTQ_WORKER_MODELS"] = ",".join(models)
    return env


def _serves_only_generation(base: Mapping[str, str], models: Sequence[str] | None) -> bool:
    """Whether every model the worker will serve generates token by token (read from `base`'s models file)."""
    from producer.registry import ModelsFileError, load_registry

    names = list(models or [m.strip() for m in base.get("TEXTQ_WORKER_MODELS", "").split(",") if m.strip()])
    models_file = base.get("TEXTQ_MODELS_FILE")
    try:
        registry = load_registry(Path(models_file) if models_file else None)
    except ModelsFileError:  # the worker refuses the file at start, with the reason
        return False
    specs = [registry.get(n) for n in names if n in registry] if names else registry.specs()
    return bool(specs) and all(spec.runner in GENERATION_RUNNERS for spec in specs)


class WorkerProcess:
    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        models: list[str] | None = None,
        pool: str = "threads",
        log_path: Path | None = None,
        name: str = "worker",
    ) -> None:
        self.env = worker_environment({**os.environ, **(env or {})}, models=models)
        self.args = worker_command(pool=pool, extra=["-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h"])
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="textq-worker-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> WorkerProcess:
        """Start the worker and return once it consumes (models loaded)."""
        if self.alive():  # `with WorkerProcess(...).start()` would otherwise start a second, orphaned one
            raise RuntimeError(f"worker {self.pid} is already running")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARK in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"worker not ready after {timeout:g}s:\n{self.log()[-4000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (Celery's warm shutdown: finish running batches), then SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the broker and the jobs table can tell."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["READY_MARK", "WorkerProcess", "worker_command", "worker_environment"]
