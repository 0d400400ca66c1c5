"""Which writes wait for PostgreSQL's WAL flush: job rows always, worker claims and results not."""

from __future__ import annotations

from sqlalchemy import text

from db.engine import session_factory
from tests.conftest import Backend


def test_only_the_worker_engine_commits_without_waiting_for_the_flush(backend: Backend) -> None:
    def synchronous_commit(*, fast_commits: bool) -> str:
        with session_factory(backend.database_url, fast_commits=fast_commits)() as session:
            if session.get_bind().dialect.name != "postgresql":
                return "n/a"  # SQLite: WAL with synchronous=NORMAL either way
            return str(session.execute(text("SHOW synchronous_commit")).scalar_one())

    expected = ("on", "off") if backend.name == "postgresql" else ("n/a", "n/a")
    assert (synchronous_commit(fast_commits=False), synchronous_commit(fast_commits=True)) == expected
