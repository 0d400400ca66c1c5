"""Producer settings (env prefix `TEXTQ_`): the broker, request limits, bulk chunking."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from producer.limits import DEFAULT_LIMITS, Limits

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class ProducerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEXTQ_", extra="ignore")

    broker_url: str = DEFAULT_BROKER_URL
    # JSON file of extra/overriding model specs (see docs/models.md).
    models_file: Path | None = None
    max_text_chars: int = Field(DEFAULT_LIMITS.max_text_chars, ge=1)
    max_labels: int = Field(DEFAULT_LIMITS.max_labels, ge=1)
    max_label_chars: int = Field(DEFAULT_LIMITS.max_label_chars, ge=1)
    max_summary_sentences: int = Field(DEFAULT_LIMITS.max_summary_sentences, ge=1)
    max_jobs_per_submit: int = Field(10_000, ge=1)
    # Jobs per Celery message in submit_many: one message costs ~2 ms of CPU, so bulk is chunked.
    jobs_per_message: int = Field(32, ge=1)
    # Seconds a job may sit queued without a message before the sweeper re-publishes it.
    republish_after_s: float = Field(60.0, gt=0)
    # Jobs a bulk retry puts back per transaction: bounds each UPDATE's locks and each publish.
    retry_batch_size: int = Field(1000, ge=1)

    @property
    def limits(self) -> Limits:
        """The request limits these settings give, to pass to the contract's validators."""
        return Limits(
            max_text_chars=self.max_text_chars,
            max_labels=self.max_labels,
            max_label_chars=self.max_label_chars,
            max_summary_sentences=self.max_summary_sentences,
        )


@lru_cache(maxsize=1)
def producer_settings() -> ProducerSettings:
    """Settings read once per process, for entry points; library code takes them as arguments."""
    return ProducerSettings()


__all__ = ["DEFAULT_BROKER_URL", "ProducerSettings", "producer_settings"]
