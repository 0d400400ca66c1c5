"""Producer settings (env prefix `TEXTQ_`): the broker, request limits, bulk chunking."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class ProducerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEXTQ_", extra="ignore")

    broker_url: str = DEFAULT_BROKER_URL
    # JSON file of extra/overriding model specs (see README "Models").
    models_file: Path | None = None
    max_text_chars: int = Field(20_000, ge=1)
    max_labels: int = Field(32, ge=1)
    max_label_chars: int = Field(100, ge=1)
    max_summary_sentences: int = Field(20, ge=1)
    max_jobs_per_submit: int = Field(10_000, ge=1)
    # Jobs per Celery message in submit_many: one message costs ~2 ms of CPU, so bulk is chunked.
    jobs_per_message: int = Field(32, ge=1)
    # Seconds a job may sit queued without a message before the sweeper re-publishes it.
    republish_after_s: float = Field(60.0, gt=0)


@lru_cache(maxsize=1)
def producer_settings() -> ProducerSettings:
    """Settings read once per process (validators on the hot path must not re-read the env)."""
    return ProducerSettings()
