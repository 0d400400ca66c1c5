"""Engines and sessions, tuned per backend (SQLite gets WAL and a busy timeout for many writers)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.settings import DatabaseSettings

SQLITE_BUSY_TIMEOUT_S = 30


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the producer read while a worker writes; NORMAL sync is durable across app crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (default: `TEXTQ_DATABASE_URL`). PostgreSQL URLs use psycopg 3."""
    url = url or DatabaseSettings().database_url
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=16)
def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """One session factory (and so one connection pool) per URL per process."""
    return sessionmaker(make_engine(url), expire_on_commit=False)


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)
