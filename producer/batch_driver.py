"""The gateway's batch driver: a thread that moves unfinished batches on (resumes loaders that died,
expires batches past their window, finalizes finished ones), and runs new batches' loaders.

Every step is safe from several processes (leases and compare-and-set in db/batches.py), so each
gateway replica runs a driver of its own.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from db import batches as store
from producer.batches import Batches

log = logging.getLogger(__name__)

# Loaders and finalizers running at once in one gateway; more batches wait for a free thread.
MAX_CONCURRENT_BATCH_STEPS = 4


class BatchDriver:
    def __init__(self, batches: Batches, *, interval_s: float) -> None:
        self.batches = batches
        self.interval_s = interval_s
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT_BATCH_STEPS, thread_name_prefix="textq-batch")
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="textq-batch-driver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def nudge(self, batch_id: str) -> None:
        """Move this batch on soon, in a pool thread (at most one step per batch at a time)."""
        with self._lock:
            if batch_id in self._busy or self._stop.is_set():
                return
            self._busy.add(batch_id)
        self._pool.submit(self._step, batch_id)

    def _step(self, batch_id: str) -> None:
        try:
            self.batches.advance(batch_id)
        except Exception:  # the next pass tries again; the batch's leases keep it consistent
            log.exception("could not move batch %s on", batch_id)
        finally:
            with self._lock:
                self._busy.discard(batch_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.batches.sessions() as session:
                    unfinished = store.unfinished_batch_ids(session)
            except Exception as exc:
                log.warning("batch driver could not read the batches table: %s", type(exc).__name__)
                continue
            for batch_id in unfinished:
                self.nudge(batch_id)


__all__ = ["BatchDriver"]
