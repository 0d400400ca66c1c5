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

from db import store, sweeps, workers
from db.engine import session_factory
from db.models import JobStatus, utcnow
from db.settings import DatabaseSettings
from producer.broker import Publisher
from producer.notify import FinishNotifier
from producer.registry import ModelSpec, Registry, load_registry
from producer.settings import ProducerSettings, producer_settings
from worker import metrics
from worker.batcher import Batcher
from worker.delayed_publish import DelayedPublisher
from worker.heartbeat import Heartbeat, dead_after
from worker.result_cache import CacheLimits, ResultCache
from worker.runners import create_runner
from worker.settings import WorkerSettings
from worker.startup import check_limits, model_load_error, wait_for_database

log = logging.getLogger(__name__)

# Jobs one sweep re-publishes at most (the rest go in the next sweep).
SWEEP_LIMIT = 1000


class ModelNotServedError(LookupError):
    """A message arrived for a model this worker does not serve (check -Q / --models)."""


class WorkerRuntime:
    def __init__(
        self,
        settings: WorkerSettings | None = None,
        registry: Registry | None = None,
        producer: ProducerSettings | None = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        producer = producer or producer_settings()
        self.limits = producer.limits
        self.registry = registry or load_registry(producer.models_file)
        self.models = self.settings.served_models(self.registry.names())
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.database_url = DatabaseSettings().database_url
        self.sessions = session_factory(self.database_url, fast_commits=self.settings.fast_commits)
        self.publisher = Publisher(producer)
        self._notify_finished = FinishNotifier(self.publisher.redis)  # over the broker's Redis
        self.batchers: dict[str, Batcher] = {}
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._retries = DelayedPublisher(self._publish_released)
        self.heartbeat = Heartbeat(
            self.sessions,
            identity=workers.WorkerIdentity(self.name, socket.gethostname(), os.getpid(), tuple(self.models), utcnow()),
            interval_s=self.settings.heartbeat_interval_s,
            lease=timedelta(seconds=self.settings.lease_s),
            jobs_in_hand=self.jobs_in_hand,
            leased=self.leased_jobs,
        )

    def start(self) -> None:
        """Wait for the database, compare limits, load every served model; WorkerStartError (after
        stopping what did start) if the database never answers or a model does not load."""
        wait_for_database(self.sessions, self.database_url, wait_s=self.settings.database_wait_s)
        check_limits(self.publisher.redis, self.limits)
        self.heartbeat.start()  # listed (as starting) from before the models load
        with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
            torch.set_num_interop_threads(1)
        for name in self.models:
            try:
                self._load_model(name)
            except Exception as exc:
                self.stop()  # the models loaded so far
                raise model_load_error(self.registry.get(name), exc) from exc
        if self.settings.metrics_port:
            metrics.serve(self.settings.metrics_port)
        # Loading leaves ~460k long-lived objects; frozen, full collections no longer walk them (~220 ms each).
        gc.collect()
        gc.freeze()
        self.heartbeat.state = workers.WorkerState.RUNNING
        self._sweeper.start()
        self._retries.start()

    def _result_cache(self, spec: ModelSpec) -> ResultCache | None:
        if not spec.result_cache:
            return None
        limits = CacheLimits(max_entries=self.settings.result_cache_max_entries,
                             max_age=timedelta(seconds=self.settings.result_cache_max_age_s))
        return ResultCache(spec, self.sessions, limits)

    def _load_model(self, name: str) -> None:
        spec = self.registry.get(name)
        log.info("loading model %s (runner %s, source %s)", name, spec.runner, spec.source)
        started = time.perf_counter()
        runner = create_runner(spec)
        batcher = Batcher(
            runner,
            self.sessions,
            worker_name=self.name,
            lease=timedelta(seconds=self.settings.lease_s),
            policy=self.settings.retry_policy(),
            on_batch=partial(self._batch_written, name),
            on_release=self._schedule_retries,
            on_claim=partial(metrics.observe_claims, name),
            torch_threads=self.settings.torch_threads,
            limits=self.limits,
            result_cache=self._result_cache(spec),
        )
        batcher.start()  # loads the model in its own thread
        self.batchers[name] = batcher
        load_seconds = time.perf_counter() - started
        metrics.MODEL_LOAD.labels(name).set(load_seconds)
        log.info("loaded model %s (%s on %s) in %.1fs", name, runner.spec.runner, runner.device, load_seconds)

    def _batch_written(self, model: str, outcomes: Sequence[store.Outcome], computed: int, seconds: float) -> None:
        metrics.observe_batch(model, outcomes, computed, seconds)
        self._notify_finished(o.id for o in outcomes)

    def _schedule_retries(self, released: Sequence[store.Outcome]) -> None:
        for outcome in released:
            self._retries.schedule(outcome.retry_at or utcnow(), [outcome.id])

    def _publish_released(self, job_ids: list[uuid.UUID]) -> None:
        """Publish the released jobs still queued (one cancelled meanwhile stays as it is)."""
        with self.sessions() as session:
            jobs = [(j.id, j.model, j.priority) for j in store.get_jobs(session, ids=job_ids) if j.status == JobStatus.QUEUED]
        self.publisher.publish_jobs(jobs)

    def hand_in(self, model: str, job_ids: Sequence[uuid.UUID]) -> None:
        """Give the jobs to the model's batcher; returns once it has room for them, before they
        are computed: the jobs table, not the message, keeps them safe (a crash leaves them queued
        or leased, and the sweeper re-publishes them)."""
        batcher = self.batchers.get(model)
        if batcher is None:
            raise ModelNotServedError(f"this worker serves {self.models}, not {model!r}")
        batcher.hand_in(job_ids)

    def leased_jobs(self) -> list[uuid.UUID]:
        """Jobs the batchers claimed and have not written yet: the leases the heartbeat renews."""
        return [job_id for batcher in list(self.batchers.values()) for job_id in batcher.leased()]

    def jobs_in_hand(self) -> int:
        """Jobs handed to the batchers and not yet written (any thread may ask)."""
        return sum(batcher.in_hand for batcher in list(self.batchers.values()))

    def stop(self) -> None:
        self._stop.set()
        self.heartbeat.state = workers.WorkerState.DRAINING
        for batcher in self.batchers.values():
            batcher.stop()
        self._retries.stop()
        self.heartbeat.stop()  # only now: the leases of the last batches are renewed while they finish

    def sweep_once(self) -> int:
        """Re-publish jobs whose message was lost or whose worker died, and end queued jobs of models
        this deployment does not know; returns how many were re-published."""
        heads = self._queue_heads()  # Redis round trips, before the transaction opens
        stale_after = timedelta(seconds=producer_settings().republish_after_s)
        with self.sessions.begin() as session:
            sweeps.expire_overdue_jobs(session)
            waiting_since = {m: None if ids is None else sweeps.earliest_published(session, ids=ids)
                             for m, ids in heads.items()}
            # Only after a republish period: a producer with a newer models file may know the model already.
            unknown = sweeps.fail_unknown_model_jobs(session, known_models=self.registry.names(),
                                                    created_before=utcnow() - stale_after)
            picked = self._jobs_of_dead_workers(session, waiting_since)  # first: they are marked published
            picked += sweeps.jobs_to_republish(
                session,
                stale_after=stale_after,
                limit=SWEEP_LIMIT,
                waiting_since=waiting_since,
            )
        if unknown:
            log.warning("sweeper failed %d queued jobs of models not in the registry", unknown)
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
_start_error: Exception | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    """The process's runtime, started on first use (the worker starts it at boot). A start that
    failed is never tried again: its error is raised again, so nothing loads twice."""
    global _runtime, _start_error
    with _runtime_lock:
        if _start_error is not None:
            raise _start_error
        if _runtime is None:
            try:
                runtime = WorkerRuntime()
                runtime.start()
            except Exception as exc:
                _start_error = exc
                raise
            _runtime = runtime
        return _runtime


def stop_runtime() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
