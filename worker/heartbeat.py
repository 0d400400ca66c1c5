"""The worker's heartbeat: a thread that keeps its row in the workers table fresh and renews the
lease of every job it holds (claimed, not yet written).

Leases are short (a few heartbeats), so a dead worker's claims lapse within seconds, while a live
worker's jobs never lapse however long they run: the beat is a thread of its own, which the model
thread does not hold up (torch releases the GIL in its kernels). A worker silent for
`MISSED_BEATS_BEFORE_DEAD` heartbeats is taken for dead by the sweepers (worker.runtime).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db import workers
from db.workers import WorkerIdentity, WorkerState
from worker.retry import with_retries

log = logging.getLogger(__name__)

MISSED_BEATS_BEFORE_DEAD = 3


def dead_after(interval_s: float) -> timedelta:
    """How long a worker's row may go unwritten before the sweepers take the worker for dead."""
    return timedelta(seconds=MISSED_BEATS_BEFORE_DEAD * interval_s)


class Heartbeat:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        identity: WorkerIdentity,
        interval_s: float,
        lease: timedelta,
        jobs_in_hand: Callable[[], int],
        leased: Callable[[], Collection[uuid.UUID]],
    ) -> None:
        self.sessions = sessions
        self.identity = identity
        self.interval_s = interval_s
        self.lease = lease
        self.jobs_in_hand = jobs_in_hand
        self.leased = leased
        self.state = WorkerState.STARTING
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Register the worker (retried while the database is briefly away; raises if it stays
        away), then beat in the background."""
        with_retries(self.beat, what="register the worker")
        self._thread.start()

    def beat(self) -> None:
        """One heartbeat: the worker's row and its leases, in one transaction."""
        with self.sessions.begin() as session:
            workers.record_heartbeat(session, worker=self.identity, jobs_in_hand=self.jobs_in_hand(), state=self.state)
            workers.renew_leases(session, worker=self.identity.name, job_ids=self.leased(), lease=self.lease)

    def stop(self) -> None:
        """Stop beating and remove the worker's row (call once its jobs are written)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            with self.sessions.begin() as session:
                workers.remove_worker(session, name=self.identity.name)
        except Exception as exc:  # its row goes stale and a sweeper removes it
            log.warning("could not remove worker %s from the workers table: %s", self.identity.name, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # the database is away: beat again next time; leases last a few beats
                log.warning("heartbeat failed (%s: %s); next in %.1fs", type(exc).__name__, exc, self.interval_s)


__all__ = ["MISSED_BEATS_BEFORE_DEAD", "Heartbeat", "dead_after"]
