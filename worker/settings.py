"""Worker settings (env prefix `TEXTQ_`): which models to serve and how to run them."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEXTQ_", extra="ignore")

    # Comma-separated model names this worker serves; empty means every model in the registry.
    worker_models: str = ""
    # How long a claim protects a running job; past it another worker may take the job over.
    lease_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    sweep_interval_s: float = Field(10.0, gt=0)
    # torch intra-op threads; default: every core. One batcher runs at a time per model, so
    # intra-op parallelism is where the cores go (inter-op threads stay at 1).
    torch_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Commit claims and results without waiting for PostgreSQL's WAL flush (see
    # db.engine.make_engine: a database crash costs a recomputation, never a job).
    fast_commits: bool = True
    # Where `onnx` / `onnx-int8` models are exported once and loaded from (docs/backends.md).
    onnx_cache: Path = Field(default_factory=lambda: default_cache_dir() / "onnx")
    # Serve Prometheus metrics on this port (0: off). One port per worker process.
    metrics_port: int = Field(0, ge=0, le=65535)

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
