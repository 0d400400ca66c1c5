"""Batch settings (env prefix `TEXTQ_BATCH_`): file limits, the batches' priority, loader leases."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEXTQ_BATCH_", extra="ignore")

    # An upload over either limit is refused whole (413).
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    max_lines: int = Field(1_000_000, ge=1)
    # Bulk work runs after interactive jobs (default 5) unless a batch asks otherwise.
    default_priority: int = Field(8, ge=0, le=9)
    # Seconds a loader or finalizer holds a batch without renewing before another process takes over.
    lease_s: float = Field(60.0, gt=0)
    # Seconds between the gateway's passes over unfinished batches (resume, expire, finalize).
    drive_interval_s: float = Field(2.0, gt=0)
    # An unfinished batch's request_counts are at most this old: each process counts a batch's jobs
    # at most once per this many seconds, however often it is polled (0: on every read).
    counts_ttl_s: float = Field(1.0, ge=0)


__all__ = ["BatchSettings"]
