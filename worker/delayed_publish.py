"""Publishing a job's message later, in-process: a released job's next message goes out at its retry_at.

The schedule lives only in this process; if it dies, the sweeper re-publishes the queued jobs
later and the claim still holds each one back until its retry_at.
"""

from __future__ import annotations

import heapq
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from db.models import utcnow

log = logging.getLogger(__name__)


class DelayedPublisher:
    """Calls `publish(job_ids)` in its own thread once the jobs' scheduled times have come."""

    def __init__(self, publish: Callable[[list[uuid.UUID]], None], *, name: str = "delayed-publisher") -> None:
        self._publish = publish
        self._due: list[tuple[datetime, uuid.UUID]] = []  # a heap, earliest first
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, when: datetime, job_ids: Iterable[uuid.UUID]) -> None:
        with self._changed:
            for job_id in job_ids:
                heapq.heappush(self._due, (when, job_id))
            self._changed.notify()

    def pending(self) -> int:
        with self._changed:
            return len(self._due)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop without publishing what is not due yet (the sweeper covers it)."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (due := self._next_due()) is not None:
            try:
                self._publish(due)
            except Exception:  # the jobs stay queued: the sweeper re-publishes them later
                log.exception("could not publish %d jobs released for a retry", len(due))

    def _next_due(self) -> list[uuid.UUID] | None:
        """Wait for the next jobs whose time has come; None once stopping."""
        with self._changed:
            while not self._stopping:
                now = utcnow()
                if self._due and self._due[0][0] <= now:
                    due: list[uuid.UUID] = []
                    while self._due and self._due[0][0] <= now:
                        due.append(heapq.heappop(self._due)[1])
                    return due
                self._changed.wait((self._due[0][0] - now).total_seconds() if self._due else None)
            return None


__all__ = ["DelayedPublisher"]
