"""Engines and sessions, tuned per backend (SQLite gets WAL and a busy timeout for many writers)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from db.settings import DatabaseSettings

SQLITE_BUSY_TIMEOUT_S = 30


def is_postgres(db: Session | Connection) -> bool:
    """Whether `db` talks to PostgreSQL (else SQLite): where a statement differs between the two."""
    bind = db.get_bind() if isinstance(db, Session) else db
    return bind.dialect.name == "postgresql"


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the producer read while a worker writes; NORMAL sync is durable across app crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def _lenient_json_loads(stored: str) -> Any:
    """SQLite stores any text in a JSON column: text that is not JSON reads back as the text itself, so
    one hand-written row cannot make every read that touches it fail."""
    try:
        return json.loads(stored)
    except ValueError:
        return stored


def make_engine(url: str | None = None, *, fast_commits: bool = False, autocommit: bool = False) -> Engine:
    """An engine for `url` (default `TEXTQ_DATABASE_URL`; psycopg 3 for PostgreSQL).

    PostgreSQL only: `fast_commits` for the worker (a lost claim or result only runs the job again) and
    `autocommit` for the producer (its writes are single statements); measured in docs/design.md.
    """
    url = url or DatabaseSettings().database_url
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                               json_deserializer=_lenient_json_loads)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if fast_commits:
        options["connect_args"] = {"options": "-c synchronous_commit=off"}
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20, **options)


@lru_cache(maxsize=16)
def shared_engine(url: str | None = None, *, fast_commits: bool = False, autocommit: bool = False) -> Engine:
    """One engine (and so one connection pool) per URL and commit mode per process."""
    return make_engine(url, fast_commits=fast_commits, autocommit=autocommit)


def session_factory(url: str | None = None, *, fast_commits: bool = False, autocommit: bool = False) -> sessionmaker[Session]:
    """Sessions on the shared engine for `url` and commit mode."""
    return sessionmaker(shared_engine(url, fast_commits=fast_commits, autocommit=autocommit), expire_on_commit=False)


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)
