"""Job counts of unfinished batches, counted at most once per moment per process.

A count reads an index entry for every job of the batch (~0.1-0.2 s of database CPU for a million
lines), and batches are polled: by clients (the openai client's users, `textq batch submit --wait`),
by `Batches.wait`, by the console. Each process counts a batch at most once per `ttl_s`, however
many callers ask meanwhile, so the counts a caller sees are at most `ttl_s` old. An ended batch
carries its final counts in its row and is never counted.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from db import batches as store


class RecentCounts:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._counted: dict[str, tuple[float, dict[str, int]]] = {}
        self._counting: dict[str, threading.Lock] = {}

    def of(self, session: Session, batch_id: str) -> dict[str, int]:
        """The batch's jobs by status, as counted within the last `ttl_s`."""
        if self.ttl_s <= 0:
            return store.batch_job_counts(session, batch_id=batch_id)
        with self._lock:
            counting = self._counting.setdefault(batch_id, threading.Lock())
        with counting:  # one count of a batch at a time: callers that waited take its result
            recent = self._recent(batch_id)
            if recent is not None:
                return recent
            started = time.monotonic()
            counts = store.batch_job_counts(session, batch_id=batch_id)
            with self._lock:
                self._forget_before(started - self.ttl_s)
                self._counted[batch_id] = (started, counts)
            return counts

    def _recent(self, batch_id: str) -> dict[str, int] | None:
        with self._lock:
            found = self._counted.get(batch_id)
        return found[1] if found is not None and time.monotonic() - found[0] < self.ttl_s else None

    def _forget_before(self, moment: float) -> None:
        """Drop old counts (ended batches are never asked again); caller holds the lock."""
        for batch_id in [b for b, (at, _) in self._counted.items() if at < moment]:
            del self._counted[batch_id]
            lock = self._counting.get(batch_id)
            if lock is not None and not lock.locked():
                del self._counting[batch_id]


__all__ = ["RecentCounts"]
