"""Worker settings (env prefix `TEXTQ_`): which models to serve and how to run them."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.retry import RetryPolicy

_DEFAULT_POLICY = RetryPolicy()


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEXTQ_", extra="ignore")

    # Comma-separated model names this worker serves; empty means every model in the registry.
    worker_models: str = ""
    # How long a claim protects a running job unless renewed; a live worker renews its claims every
    # heartbeat, so this bounds only how long a dead worker's jobs wait (worker/heartbeat.py).
    lease_s: float = Field(10.0, gt=0)
    # How often a worker writes its row in the workers table and renews its leases.
    heartbeat_interval_s: float = Field(2.0, gt=0)
    # The retry policy (worker.retry): tries per job, and the backoff of a job released for a retry.
    max_attempts: int = Field(_DEFAULT_POLICY.max_attempts, ge=1)
    retry_backoff_s: float = Field(_DEFAULT_POLICY.backoff_s, ge=0)
    retry_backoff_max_s: float = Field(_DEFAULT_POLICY.max_backoff_s, ge=0)
    # How often the sweeper looks for lost messages and dead workers.
    sweep_interval_s: float = Field(2.0, gt=0)
    # torch intra-op threads; default: every core. One batcher runs at a time per model, so
    # intra-op parallelism is where the cores go (inter-op threads stay at 1).
    torch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Commit claims and results without waiting for PostgreSQL's WAL flush (see
    # db.engine.make_engine: a database crash costs a recomputation, never a job).
    fast_commits: bool = True
    # A model whose spec asks for bfloat16 runs in it on a CPU with native bf16 (AVX512-BF16 or AMX);
    # false keeps every model in float32 on such a CPU too (worker.runners.base.pick_dtype).
    cpu_bf16: bool = True
    # Where `onnx` / `onnx-int8` models are exported once and loaded from (docs/backends.md).
    onnx_cache: Path = Field(default_factory=lambda: default_cache_dir() / "onnx")
    # Models with `result_cache` in their spec keep at most this many entries each, none older than
    # this; older entries are never reused and are deleted about every minute (worker/result_cache.py).
    result_cache_max_entries: int = Field(100_000, ge=1)
    result_cache_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    # Serve Prometheus metrics on this port (0: off). One port per worker process.
    metrics_port: int = Field(0, ge=0, le=65535)
    # Seconds a starting worker waits for its database before it exits non-zero (never says ready).
    database_wait_s: float = Field(30.0, ge=0)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, backoff_s=self.retry_backoff_s,
                           max_backoff_s=self.retry_backoff_max_s)

    @model_validator(mode="after")
    def _leases_outlast_a_heartbeat(self) -> WorkerSettings:
        if self.lease_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"TEXTQ_LEASE_S ({self.lease_s:g}) must be longer than TEXTQ_HEARTBEAT_INTERVAL_S "
                f"({self.heartbeat_interval_s:g}): leases are renewed every heartbeat"
            )
        return self

    def served_models(self, available: list[str]) -> list[str]:
        if not self.worker_models.strip():
            return available
        wanted = [m.strip() for m in self.worker_models.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(available))
        if unknown:
            raise ValueError(f"TEXTQ_WORKER_MODELS names unknown models {unknown}; available: {available}")
        return wanted


def default_cache_dir() -> Path:
    """textq's folder under the user cache directory (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textq"
