"""Query plans of what a store function really sends: its statements are captured as the driver gets
them (SQL and parameters), then run again under EXPLAIN (ANALYZE, BUFFERS) in a transaction that is
rolled back, so a write (claim, purge, retry) is planned and timed without changing the table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session


@dataclass
class Captured:
    statements: list[tuple[str, Any]] = field(default_factory=list)


@contextmanager
def capturing(engine: Engine) -> Iterator[Captured]:
    """Every statement `engine` sends to the database inside the block, with its parameters."""
    captured = Captured()

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _executemany: bool) -> None:
        if not statement.lstrip().upper().startswith(("SET", "SELECT SET_CONFIG", "BEGIN", "COMMIT", "ROLLBACK")):
            captured.statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield captured
    finally:
        event.remove(engine, "before_cursor_execute", record)


def explain(engine: Engine, statement: str, parameters: Any) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of one captured statement, its effects rolled back."""
    with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn, conn.begin() as transaction:
        rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).all()
        transaction.rollback()
    return [str(row[0]) for row in rows]


def plans_of(sessions: Callable[[], Session], fn: Callable[[Session], object]) -> list[tuple[str, list[str]]]:
    """(statement, plan) for each statement `fn` sends through a session of `sessions`."""
    with sessions() as session:
        engine = session.get_bind()
        assert isinstance(engine, Engine)
        with capturing(engine) as captured:
            fn(session)
        session.rollback()
    return [(statement, explain(engine, statement, parameters)) for statement, parameters in captured.statements]


__all__ = ["capturing", "explain", "plans_of"]
