"""The per-process worker runtime: loaded models, their batchers, and the sweeper.

Built once per worker process when the worker starts (never at import, never before a fork).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial

import torch
from sqlalchemy.orm import Session

from db import store, workers
from db.engine import session_factory
from db.models import utcnow
from db.settings import DatabaseSettings
from producer.broker import Publisher
from producer.notify import FinishNotifier
from producer.registry import Registry, default_registry
from producer.settings import producer_settings
from worker import metrics
from worker.batcher import Batcher
from worker.heartbeat import Heartbeat, dead_after
from worker.runners import create_runner
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# Jobs one sweep re-publishes at most (the rest go in the next sweep).
SWEEP_LIMIT = 1000


class ModelNotServedError(LookupError):
    """A message arrived for a model this worker does not serve (check -Q / --models)."""


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings | None = None, registry: Registry | None = None) -> None:
        self.settings = settings or WorkerSettings()
        self.registry = registry or default_registry()
        self.models = self.settings.served_models(self.registry.names())
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.sessions = session_factory(DatabaseSettings().database_url, fast_commits=self.settings.fast_commits)
        self.publisher = Publisher(producer_settings())
        self._notify_finished = FinishNotifier(self.publisher.redis)  # over the broker's Redis
        self.batchers: dict[str, Batcher] = {}
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self.heartbeat = Heartbeat(
            self.sessions,
            identity=workers.WorkerIdentity(self.name, socket.gethostname(), os.getpid(), tuple(self.models), utcnow()),
            interval_s=self.settings.heartbeat_interval_s,
            lease=timedelta(seconds=self.settings.lease_s),
            jobs_in_hand=self.jobs_in_hand,
        )

    def start(self) -> None:
        self.heartbeat.start()  # the worker is listed (as starting) from before its models load
        with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
            torch.set_num_interop_threads(1)
        for name in self.models:
            started = time.perf_counter()
            runner = create_runner(self.registry.get(name))
            batcher = Batcher(
                runner,
                self.sessions,
                worker_name=self.name,
                lease=timedelta(seconds=self.settings.lease_s),
                max_attempts=self.settings.max_attempts,
                on_batch=partial(self._batch_written, name),
                on_claim=partial(metrics.observe_claims, name),
                torch_threads=self.settings.torch_threads,
            )
            batcher.start()  # loads the model in its own thread
            self.batchers[name] = batcher
            load_seconds = time.perf_counter() - started
            metrics.MODEL_LOAD.labels(name).set(load_seconds)
            log.info("loaded model %s (%s on %s) in %.1fs", name, runner.spec.runner, runner.device, load_seconds)
        if self.settings.metrics_port:
            metrics.serve(self.settings.metrics_port)
        # torch, transformers and the loaded models leave ~460k objects for the cyclic garbage
        # collector, and each full collection walked them all: ~220 ms with every batcher thread
        # stopped. They live as long as the process, so they move out of its reach for good (after
        # one last collection, so that no garbage from loading is frozen with them).
        gc.collect()
        gc.freeze()
        self.heartbeat.state = workers.WorkerState.RUNNING
        self._sweeper.start()

    def _batch_written(self, model: str, outcomes: Sequence[store.Outcome], computed: int, seconds: float) -> None:
        metrics.observe_batch(model, outcomes, computed, seconds)
        self._notify_finished(o.id for o in outcomes)

    def hand_in(self, model: str, job_ids: Sequence[uuid.UUID]) -> None:
        """Give the jobs to the model's batcher; returns once it has room for them, before they
        are computed: the jobs table, not the message, keeps them safe (a crash leaves them queued
        or leased, and the sweeper re-publishes them)."""
        batcher = self.batchers.get(model)
        if batcher is None:
            raise ModelNotServedError(f"this worker serves {self.models}, not {model!r}")
        batcher.hand_in(job_ids)

    def jobs_in_hand(self) -> int:
        """Jobs handed to the batchers and not yet written (any thread may ask)."""
        return sum(batcher.in_hand for batcher in list(self.batchers.values()))

    def stop(self) -> None:
        self._stop.set()
        self.heartbeat.state = workers.WorkerState.DRAINING
        for batcher in self.batchers.values():
            batcher.stop()
        self.heartbeat.stop()  # only now: the leases of the last batches are renewed while they finish

    def sweep_once(self) -> int:
        """Re-publish jobs whose message was lost or whose worker died; returns how many."""
        heads = self._queue_heads()  # Redis round trips, before the transaction opens
        with self.sessions.begin() as session:
            store.expire_overdue_jobs(session)
            waiting_since = {m: None if ids is None else store.earliest_published(session, ids=ids)
                             for m, ids in heads.items()}
            picked = self._jobs_of_dead_workers(session, waiting_since)  # first: they are marked published
            picked += store.jobs_to_republish(
                session,
                stale_after=timedelta(seconds=producer_settings().republish_after_s),
                limit=SWEEP_LIMIT,
                waiting_since=waiting_since,
            )
        # A picked job's message is gone, and it is older than any still waiting: it goes first.
        self.publisher.publish_jobs(picked, front=True)
        if picked:
            log.warning("sweeper re-published %d jobs", len(picked))
        return len(picked)

    def _jobs_of_dead_workers(
        self, session: Session, waiting_since: dict[str, datetime | None]
    ) -> list[tuple[uuid.UUID, str, int]]:
        """Remove the workers that stopped beating; the jobs they held come back at once, without
        waiting for their leases or for the republish delay (see db.workers.reclaim_dead_workers)."""
        dead, picked = workers.reclaim_dead_workers(
            session, silent_for=dead_after(self.settings.heartbeat_interval_s), waiting_since=waiting_since, limit=SWEEP_LIMIT
        )
        if dead:
            log.warning("worker(s) %s stopped beating: re-publishing the %d jobs they held", ", ".join(dead), len(picked))
        return picked

    def _queue_heads(self) -> dict[str, list[uuid.UUID] | None]:
        """For each model whose queue holds messages: job ids from the messages read next (None
        when the broker cannot be peeked at)."""
        heads: dict[str, list[uuid.UUID] | None] = {}
        for model in self.registry.names():
            next_ids = self.publisher.next_in_line(model)
            if next_ids or (next_ids is None and self.publisher.queue_depth(model) > 0):
                heads[model] = next_ids
        return heads

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep failed; retrying in %.0fs", self.settings.sweep_interval_s)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    """The process's runtime, started on first use (the worker starts it at boot)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            runtime = WorkerRuntime()
            try:
                runtime.start()
            except BaseException:
                runtime.stop()  # no heartbeat thread nor batcher left behind by a failed start
                raise
            _runtime = runtime
        return _runtime


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
