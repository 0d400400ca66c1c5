"""Client.wait_many against a real database and Redis: it re-reads the rows that finish notifications
name, and polls every pending row only as the fallback for a lost notification. Rows are finished
here directly, as a worker's writer does, so the test decides which notifications are sent."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

from sqlalchemy import update

from db.engine import session_factory
from db.models import Job, JobStatus, utcnow
from producer import Client
from producer.contract import JobView
from producer.notify import FinishNotifier, redis_for
from tests.conftest import Backend
from tests.helpers import unique_text, wait_until


def _finish(backend: Backend, ids: Sequence[uuid.UUID], *, notify: bool) -> None:
    with session_factory(backend.database_url).begin() as session:
        session.execute(update(Job).where(Job.id.in_(list(ids))).values(
            status=JobStatus.SUCCEEDED, finished_at=utcnow(), output={"label": "done"}))
    if notify:
        FinishNotifier(redis_for(backend.broker_url))(ids)


class _CountingReads:
    """Wraps the client's get_many to count the rows each wait reads (the reads themselves are real)."""

    def __init__(self, client: Client) -> None:
        self.rows: list[int] = []
        self._read = client.get_many
        client.get_many = self  # type: ignore[method-assign]

    def __call__(self, ids: Sequence[uuid.UUID | str]) -> list[JobView]:
        self.rows.append(len(ids))
        return self._read(ids)


def _wait_in_thread(client: Client, ids: list[uuid.UUID], poll_interval: float) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(client.wait_many(ids, timeout=60, poll_interval=poll_interval)))
    thread.start()
    return thread, result


def test_wait_many_reads_only_the_rows_notifications_name(isolated_backend: Backend) -> None:
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        ids = [j.id for j in client.submit_many([{"text": unique_text("wait"), "model": "echo"} for _ in range(100)])]
        reads = _CountingReads(client)
        thread, result = _wait_in_thread(client, ids, poll_interval=60)  # the poll cannot help within the test
        wait_until(lambda: len(reads.rows) == 2, what="the read before and after subscribing")
        for start in range(0, 100, 10):
            before = len(reads.rows)
            _finish(isolated_backend, ids[start:start + 10], notify=True)
            wait_until(lambda before=before: len(reads.rows) > before or not thread.is_alive(), what="the notified rows read")
        thread.join(30)
    views = result[0]
    assert isinstance(views, list) and [v.status for v in views] == ["succeeded"] * 100
    # 100 + 100 before the first notification, then each finished row once: re-reading every pending
    # row per notification would read 100 + 100 + 90 + 80 + ... + 10 = 650.
    assert sum(reads.rows) <= 300, reads.rows


def test_wait_many_still_sees_rows_whose_notification_was_lost(isolated_backend: Backend) -> None:
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as client:
        ids = [j.id for j in client.submit_many([{"text": unique_text("lost"), "model": "echo"} for _ in range(20)])]
        reads = _CountingReads(client)
        thread, result = _wait_in_thread(client, ids, poll_interval=0.5)
        wait_until(lambda: len(reads.rows) >= 2, what="the wait subscribed")
        _finish(isolated_backend, ids[:10], notify=True)
        _finish(isolated_backend, ids[10:], notify=False)  # as if Redis dropped these notifications
        started = time.monotonic()
        thread.join(30)
        assert not thread.is_alive()
    views = result[0]
    assert isinstance(views, list) and [v.status for v in views] == ["succeeded"] * 20
    assert time.monotonic() - started < 5, "the poll every 0.5 s found the rows without a notification"
