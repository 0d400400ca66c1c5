"""Database settings: where the jobs table lives."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///textq.db"


class DatabaseSettings(BaseSettings):
    """`TEXTQ_DATABASE_URL`: any SQLAlchemy URL; PostgreSQL in production, SQLite embedded."""

    model_config = SettingsConfigDict(env_prefix="TEXTQ_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
