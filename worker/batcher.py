"""The per-model pipeline: a claimer, a batcher (the only thread that touches the model) and a writer.

The claimer gathers handed-in ids into batches and claims them, the batcher runs the model on
length-sorted, token-bounded groups, the writer records the outcomes; each stays one batch ahead
of the next, so the model never waits for the database.

It needs no Celery, Redis or worker process: `Batcher(runner, sessions, lease=...)`, `start()`,
`hand_in(ids)`, `wait_idle()` or `stop()`, then read the rows (tests/test_batcher.py does).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import torch
from sqlalchemy.orm import Session, sessionmaker

from db import store, webhooks
from db.models import utcnow
from db.store import Outcome
from producer.contract import JobInput, parse_job_input
from producer.errors import InvalidJobError
from producer.limits import DEFAULT_LIMITS, Limits
from worker.retry import Retry, RetryPolicy
from worker.runners.base import Runner
from worker.runners.chunking import token_bounded

log = logging.getLogger(__name__)

# Jobs in hand per batch slot before hand_in blocks: a batch per stage plus one forming, no more.
HIGH_WATER_BATCHES = 6
# While no batch comes, the runner's between-batch upkeep (a version switch) still runs this often.
UPKEEP_INTERVAL_S = 1.0


@dataclass(slots=True)
class _Item:
    claim: store.ClaimedJob
    input: JobInput
    tokens: int


@dataclass(slots=True)
class _Claimed:
    """One claimed batch; `suspects` were tried before and run one by one after it."""

    items: list[_Item]
    failures: list[Outcome]
    suspects: set[uuid.UUID]
    handed: list[uuid.UUID]  # the ids handed in for this batch, claimed or not


@dataclass(slots=True)
class _Write:
    """One transaction for the writer thread; `settled` ids leave the in-hand count after it."""

    outcomes: list[Outcome]
    computed: int
    seconds: float
    settled: list[uuid.UUID] = field(default_factory=list)


class Batcher:
    """Claims, computes and records the jobs handed in for one model.

    `on_batch(finished, computed, seconds)` runs after each written batch, `on_claim(created_at)`
    after each claim and `on_release(released)` after jobs went back to queued for a retry (whoever
    runs the batcher publishes them again at their `retry_at`); all run in pipeline threads.
    """

    def __init__(
        self,
        runner: Runner,
        sessions: sessionmaker[Session],
        *,
        lease: timedelta,
        policy: RetryPolicy | None = None,
        worker_name: str | None = None,
        on_batch: Callable[[Sequence[Outcome], int, float], None] | None = None,
        on_claim: Callable[[list[datetime]], None] | None = None,
        on_release: Callable[[Sequence[Outcome]], None] | None = None,
        torch_threads: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.runner = runner
        self.limits = limits
        self.spec = runner.spec
        self.sessions = sessions
        self.lease = lease
        self.policy = policy or RetryPolicy()
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self.on_batch = on_batch
        self.on_claim = on_claim
        self.on_release = on_release
        self.torch_threads = torch_threads
        self.high_water = HIGH_WATER_BATCHES * self.spec.max_batch_size
        self._inbox: queue.SimpleQueue[uuid.UUID | None] = queue.SimpleQueue()
        # One claimed batch waits while the model runs another: claims stay one batch ahead.
        self._claimed: queue.Queue[_Claimed | None] = queue.Queue(maxsize=1)
        # Two writes may wait: if the database falls further behind, the model waits for it.
        self._writes: queue.Queue[_Write | None] = queue.Queue(maxsize=2)
        self._in_hand = 0
        self._room = threading.Condition()
        # Claimed and not yet written: the heartbeat renews exactly these leases, so a job whose
        # result could not be written is not kept alive by a worker that has let go of it.
        self._leased: set[uuid.UUID] = set()
        self._endpoints = webhooks.EndpointPresence()  # writer thread only
        self._last_batch_size = 0
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._claimer = threading.Thread(target=self._claim_loop, name=f"claimer-{self.spec.name}", daemon=True)
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.spec.name}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"writer-{self.spec.name}", daemon=True)

    def start(self) -> None:
        """Load the model in the batcher thread and start the pipeline; raises if loading fails."""
        self._writer.start()
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            self._claimed.put(None)  # ends the batcher thread, which ends the writer
            raise self._load_error
        self._claimer.start()

    def hand_in(self, job_ids: Sequence[uuid.UUID], timeout: float | None = None) -> None:
        """Queue jobs for the next batches; blocks while `high_water` jobs are already in hand."""
        with self._room:
            self._room.wait_for(lambda: self._in_hand < self.high_water, timeout)
            self._in_hand += len(job_ids)
        for job_id in job_ids:
            self._inbox.put(job_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every job handed in so far is written; False if `timeout` passed first."""
        with self._room:
            return self._room.wait_for(lambda: self._in_hand == 0, timeout)

    def leased(self) -> list[uuid.UUID]:
        """Jobs this batcher claimed and has not written yet (any thread may ask)."""
        with self._room:
            return list(self._leased)

    @property
    def in_hand(self) -> int:
        """Jobs handed in and not yet written, claimed or not (the worker's heartbeat reports it)."""
        return self._in_hand

    def stop(self, timeout: float = 120.0) -> None:
        """Finish and write everything handed in, then end the claimer, batcher and writer threads."""
        self._inbox.put(None)
        for thread in (self._claimer, self._thread, self._writer):
            thread.join(timeout)

    # -- the claimer thread -------------------------------------------------------------------
    def _claim_loop(self) -> None:
        stopping = False
        while not stopping:
            ids, stopping = self._gather()
            if ids:
                self._claimed.put(self._claim_batch(ids))
        self._claimed.put(None)

    def _gather(self) -> tuple[list[uuid.UUID], bool]:
        first = self._inbox.get()
        if first is None:
            return [], True
        ids = [first]
        # Under light load (the last batch was a single job) waiting only adds latency.
        wait_s = self.spec.max_wait_ms / 1000 if self._last_batch_size > 1 else 0.0
        deadline = time.monotonic() + wait_s
        while len(ids) < self.spec.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job_id = self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            if job_id is None:
                return ids, True
            ids.append(job_id)
        self._last_batch_size = len(ids)
        return ids, False

    def _claim_batch(self, job_ids: list[uuid.UUID]) -> _Claimed:
        ids = set(job_ids)
        try:
            claims = self._claim(ids, first_attempt_only=True)
        except Exception:  # the database stayed down: the jobs stay as they are for the sweeper
            log.exception("could not claim a batch of %d %s jobs", len(ids), self.spec.name)
            return _Claimed([], [], set(), handed=job_ids)
        items, failures = self._parse(claims)
        # Ids of finished jobs (from redelivered messages) are suspects too; their claim is empty.
        return _Claimed(items, failures, ids - {c.id for c in claims}, handed=job_ids)

    # -- the batcher thread ------------------------------------------------------------------
    def _loop(self) -> None:
        # All torch work, loading included, stays in this thread: OpenMP thread teams are per thread.
        try:
            if self.torch_threads is not None:
                torch.set_num_threads(self.torch_threads)
            self.runner.setup()
            log.info("%s serves version %s", self.spec.name, self.runner.version)  # hashed now, not in a batch
        except BaseException as exc:
            self._load_error = exc
        finally:
            self._loaded.set()
        while (batch := self._next_claimed()) is not None:
            try:
                self._run_batch(batch)
            except Exception:  # the database stayed down: the jobs stay as they are for the sweeper
                log.exception("batch of %d %s jobs failed", len(batch.handed), self.spec.name)
            self._writes.put(_Write([], 0, 0.0, settled=batch.handed))
        self._writes.put(None)

    def _next_claimed(self) -> _Claimed | None:
        while True:
            self.runner.between_batches()
            try:
                return self._claimed.get(timeout=UPKEEP_INTERVAL_S)
            except queue.Empty:
                continue

    def _run_batch(self, batch: _Claimed) -> None:
        self._writes.put(self._compute(batch.items, list(batch.failures)))
        # Jobs tried before may have killed a worker: each runs alone, after the batch is committed.
        if batch.suspects:
            self._writes.join()
        for job_id in batch.suspects:
            write = self._compute(*self._parse(self._claim({job_id}, first_attempt_only=False)))
            if write.outcomes:
                self._writes.put(write)
                self._writes.join()

    def _compute(self, items: list[_Item], outcomes: list[Outcome]) -> _Write:
        """Run `items` in length-sorted, token-bounded groups; `outcomes` gets theirs appended."""
        # Claimed a batch ahead, a job may pass its deadline while it waits: it ends unrun.
        now = utcnow()
        runnable: list[_Item] = []
        for item in items:
            if item.claim.expires_at is not None and item.claim.expires_at < now:
                outcomes.append(Outcome.expired(item.claim))
            else:
                runnable.append(item)
        runnable.sort(key=lambda item: item.tokens)
        started = time.perf_counter()
        for runner, same_version in self._by_version(runnable, outcomes):
            for group in self._token_bounded(same_version):
                outcomes.extend(self._predict_isolating(group, runner))
        return _Write(outcomes, len(runnable), time.perf_counter() - started)

    def _by_version(self, items: list[_Item], outcomes: list[Outcome]) -> list[tuple[Runner, list[_Item]]]:
        """Items grouped by the runner of the version they run on (a job may pin one); a job whose
        version cannot be served fails alone."""
        groups: dict[int, tuple[Runner, list[_Item]]] = {}
        for item in items:
            try:
                runner = self.runner.for_version(item.claim.model_version)
            except Exception as exc:
                outcomes.append(_failure(item.claim, exc))
                continue
            groups.setdefault(id(runner), (runner, []))[1].append(item)
        return list(groups.values())

    def _token_bounded(self, items: list[_Item]) -> list[list[_Item]]:
        """Split items, shortest first, so that padded size (count x longest) stays in budget."""
        groups = token_bounded([item.tokens for item in items], max_tokens=self.spec.max_batch_tokens, max_items=len(items))
        return [[items[i] for i in group] for group in groups]

    def _predict_isolating(self, items: list[_Item], runner: Runner) -> list[Outcome]:
        """Run a group, splitting it in halves on an error so that a bad input fails alone."""
        try:
            outputs = runner.predict([item.input for item in items])
            if len(outputs) != len(items):
                raise RuntimeError(f"runner returned {len(outputs)} outputs for {len(items)} inputs")
        except Exception as exc:
            # A Retry is the runner's word on the whole group: splitting it would only retry sooner.
            if len(items) == 1 or isinstance(exc, Retry):
                return [self._after_error(item.claim, exc) for item in items]
            half = len(items) // 2
            return self._predict_isolating(items[:half], runner) + self._predict_isolating(items[half:], runner)
        # An exception in a job's place is the runner's word on that job alone (e.g. past its time limit).
        return [self._after_error(item.claim, output) if isinstance(output, Exception)
                else Outcome.succeeded(item.claim, output, model_version=runner.version)
                for item, output in zip(items, outputs, strict=True)]

    def _after_error(self, claim: store.ClaimedJob, exc: Exception) -> Outcome:
        """Released for a retry if the policy calls `exc` transient and attempts remain, else failed."""
        if not self.policy.releases(exc):
            log.warning("job %s failed in %s: %r", claim.id, self.spec.name, exc)
            return _failure(claim, exc)
        if self.policy.exhausted(claim.attempts):
            return Outcome.failed(
                claim,
                error_type=store.MAX_ATTEMPTS_ERROR,
                error_message=f"{_describe(exc)} (attempts exhausted: {claim.attempts} of {self.policy.max_attempts})",
            )
        retry_at = utcnow() + self.policy.delay(exc, claim.attempts)
        log.warning("job %s released for a retry at %s: %s", claim.id, retry_at.isoformat(), _describe(exc))
        return Outcome.released(claim, retry_at=retry_at)

    # -- the writer thread -------------------------------------------------------------------
    def _write_loop(self) -> None:
        while (write := self._writes.get()) is not None:
            try:
                if write.outcomes:
                    self._record(write.outcomes, write.computed, write.seconds)
            except Exception:
                log.exception("could not write %d %s outcomes; their leases will expire and they run again",
                              len(write.outcomes), self.spec.name)
            finally:
                # Written or not, these jobs are let go: a lease left unrenewed lapses, and they run again.
                with self._room:
                    self._leased.difference_update(o.id for o in write.outcomes)
                    if write.settled:
                        self._leased.difference_update(write.settled)
                        self._in_hand -= len(write.settled)
                        self._room.notify_all()
                self._writes.task_done()
        self._writes.task_done()

    def _record(self, outcomes: list[Outcome], computed: int, elapsed: float) -> None:
        """Write a batch's finished and released outcomes in one transaction; writer thread."""
        finished = [o for o in outcomes if o.finished]
        released = [o for o in outcomes if not o.finished]

        def write() -> None:
            with self.sessions.begin() as session:
                store.finish_jobs(session, outcomes=finished)
                store.release_jobs(session, outcomes=released)
                # In the result's transaction: never lost. Skipped (no statement) when nothing would be queued.
                everyone = self._endpoints.any(session)
                webhooks.queue_job_events(session, job_ids=[o.id for o in finished if everyone or o.webhook])

        self.policy.with_retries(write, what=f"write {self.spec.name} results")
        if self.on_batch is not None:
            self.on_batch(finished, computed, elapsed)
        if self.on_release is not None and released:
            self.on_release(released)

    # -- claims (claimer and batcher threads) -------------------------------------------------
    def _claim(self, ids: set[uuid.UUID], *, first_attempt_only: bool) -> list[store.ClaimedJob]:
        def claim() -> list[store.ClaimedJob]:
            with self.sessions.begin() as session:
                return store.claim_jobs(
                    session, ids=ids, model=self.spec.name, worker=self.worker_name, lease=self.lease,
                    max_attempts=self.policy.max_attempts, first_attempt_only=first_attempt_only,
                )

        claims = self.policy.with_retries(claim, what=f"claim {self.spec.name} jobs")
        with self._room:
            self._leased.update(c.id for c in claims)
        if self.on_claim is not None and claims:
            self.on_claim([c.created_at for c in claims])
        return claims

    def _parse(self, claims: list[store.ClaimedJob]) -> tuple[list[_Item], list[Outcome]]:
        """Validate claimed inputs again (rows and messages can bypass the producer)."""
        items: list[_Item] = []
        failures: list[Outcome] = []
        for claim in claims:
            try:
                if claim.input_error is not None:
                    raise InvalidJobError.single("input", claim.input_error)
                job_input = parse_job_input(self.spec, claim.input, self.limits)
                tokens = self.runner.estimate_tokens(job_input)
            except Exception as exc:  # an invalid input, or one the runner cannot size: it fails alone
                failures.append(_failure(claim, exc))
                continue
            items.append(_Item(claim, job_input, tokens))
        return items, failures


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _failure(claim: store.ClaimedJob, exc: Exception) -> Outcome:
    return Outcome.failed(claim, error_type=type(exc).__name__, error_message=str(exc)[:2000] or repr(exc))


__all__ = ["Batcher"]
