"""Whether the services a worker needs answer: the probes behind a worker's start and
`textq worker --check`. Each returns None, or one line that names the service and what is wrong."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db import redact_url, store
from producer.broker import Publisher


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy and kombu wrap the driver's error; its first line says what happened.
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def database_problem(sessions: sessionmaker[Session], url: str) -> str | None:
    """Why the jobs table at `url` cannot be read (unreachable, refused, not migrated), or None."""
    try:
        with sessions() as session:
            store.jobs_table_answers(session)  # the table, not SELECT 1: an unmigrated one cannot serve
    except Exception as exc:
        return f"database at {redact_url(url)} is unreachable or not ready: {_first_line(exc)}"
    return None


def broker_problem(publisher: Publisher) -> str | None:
    """Why the broker does not answer, or None."""
    try:
        if publisher.redis is not None:
            publisher.redis.ping()
        else:
            with publisher.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"broker at {publisher.redacted_url()} is unreachable: {_first_line(exc)}"
    return None


__all__ = ["broker_problem", "database_problem"]
