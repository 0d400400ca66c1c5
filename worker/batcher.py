"""One batcher thread per model: the only thread that touches the model and its tokenizer.

The job consumer hands in job ids and goes on (it blocks only while too much is already in hand,
which is the backpressure that leaves further messages on Redis for other workers). Three threads
per model form a pipeline, so the model never waits for the database:

- the claimer gathers ids from any number of messages (up to `max_batch_size`, waiting at most
  `max_wait_ms` after the first when load is up), claims them in one statement and validates their
  inputs, one batch ahead of the model;
- the batcher sorts a claimed batch by length, splits it by `max_batch_tokens` to cut padding and
  runs the model;
- the writer writes each batch's outcomes in one transaction while the model runs the next batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import torch
from sqlalchemy.orm import Session, sessionmaker

from db import store
from db.models import JobStatus, utcnow
from producer.contract import JobInput, parse_job_input
from worker.retry import with_retries
from worker.runners.base import Runner

log = logging.getLogger(__name__)

# Jobs in hand (handed in, not yet written) per batch slot before the consumer waits: enough for
# every stage (gathering, claimed, computing, two writes) to hold a batch and the next to form,
# little enough that a crash leaves few jobs for the sweeper to bring back.
HIGH_WATER_BATCHES = 6


@dataclass(slots=True)
class _Item:
    claim: store.ClaimedJob
    input: JobInput
    tokens: int


@dataclass(slots=True)
class _Claimed:
    """One claimed batch for the model thread. `suspects` were tried before (maybe they killed a
    worker): they are claimed and run one by one after the batch is written."""

    items: list[_Item]
    failures: list[store.Outcome]
    suspects: set[uuid.UUID]
    settles: int


@dataclass(slots=True)
class _Write:
    """One transaction for the writer thread; `settles` ids leave the in-hand count after it."""

    outcomes: list[store.Outcome]
    computed: int
    seconds: float
    settles: int = 0


class Batcher:
    def __init__(
        self,
        runner: Runner,
        sessions: sessionmaker[Session],
        *,
        worker_name: str,
        lease: timedelta,
        max_attempts: int,
        on_batch: Callable[[Sequence[store.Outcome], int, float], None] | None = None,
        on_claim: Callable[[list[datetime]], None] | None = None,
        torch_threads: int | None = None,
    ) -> None:
        self.runner = runner
        self.spec = runner.spec
        self.sessions = sessions
        self.worker_name = worker_name
        self.lease = lease
        self.max_attempts = max_attempts
        self.on_batch = on_batch
        self.on_claim = on_claim
        self.torch_threads = torch_threads
        self.high_water = HIGH_WATER_BATCHES * self.spec.max_batch_size
        self._inbox: queue.SimpleQueue[uuid.UUID | None] = queue.SimpleQueue()
        # One claimed batch waits while the model runs another: claims stay one batch ahead.
        self._claimed: queue.Queue[_Claimed | None] = queue.Queue(maxsize=1)
        # Two writes may wait: if the database falls further behind, the model waits for it.
        self._writes: queue.Queue[_Write | None] = queue.Queue(maxsize=2)
        self._in_hand = 0
        self._room = threading.Condition()
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
        """Queue jobs for the next batches. Blocks while the batcher already holds `high_water`
        jobs, so a worker never takes far more messages than it is about to compute."""
        with self._room:
            self._room.wait_for(lambda: self._in_hand < self.high_water, timeout)
            self._in_hand += len(job_ids)
        for job_id in job_ids:
            self._inbox.put(job_id)

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
        except Exception:  # the database stayed down past the retries: the jobs stay queued or
            # keep their lease, and the sweeper brings them back later.
            log.exception("could not claim a batch of %d %s jobs", len(ids), self.spec.name)
            return _Claimed([], [], set(), settles=len(job_ids))
        items, failures = self._parse(claims)
        # Ids of finished jobs (from redelivered messages) are suspects too; their claim is empty.
        return _Claimed(items, failures, ids - {c.id for c in claims}, settles=len(job_ids))

    # -- the batcher thread ------------------------------------------------------------------
    def _loop(self) -> None:
        # This thread does all of the model's torch work, loading included. OpenMP keeps a team of
        # threads per thread that runs parallel ops: a second team (say, from loading in the main
        # thread) spins on the same cores and slowed the forward pass by ~25% on 2 cores. The thread
        # count is per thread too, so it is set here.
        try:
            if self.torch_threads is not None:
                torch.set_num_threads(self.torch_threads)
            self.runner.setup()
        except BaseException as exc:
            self._load_error = exc
        finally:
            self._loaded.set()
        while (batch := self._claimed.get()) is not None:
            try:
                self._run_batch(batch)
            except Exception:  # the database stayed down past the retries: jobs keep their
                # lease or stay queued, and the sweeper brings them back later.
                log.exception("batch of %d %s jobs failed", batch.settles, self.spec.name)
            self._writes.put(_Write([], 0, 0.0, settles=batch.settles))
        self._writes.put(None)

    def _run_batch(self, batch: _Claimed) -> None:
        self._writes.put(self._compute(batch.items, list(batch.failures)))
        # Jobs tried before without a result (maybe they killed a worker) are claimed and run one
        # by one after the batch is written, so a poison job takes no other job down with it.
        if batch.suspects:
            self._writes.join()  # the batch's results are committed before any suspect runs
        for job_id in batch.suspects:
            write = self._compute(*self._parse(self._claim({job_id}, first_attempt_only=False)))
            if write.outcomes:
                self._writes.put(write)
                self._writes.join()

    def _compute(self, items: list[_Item], outcomes: list[store.Outcome]) -> _Write:
        """Run `items` in length-sorted, token-bounded groups; `outcomes` gets theirs appended."""
        # Claimed a batch ahead, a job may pass its deadline while it waits: it ends unrun.
        now = utcnow()
        runnable: list[_Item] = []
        for item in items:
            if item.claim.expires_at is not None and item.claim.expires_at < now:
                outcomes.append(store.expired_outcome(item.claim))
            else:
                runnable.append(item)
        runnable.sort(key=lambda item: item.tokens)
        started = time.perf_counter()
        for group in self._token_bounded(runnable):
            outcomes.extend(self._predict_isolating(group))
        return _Write(outcomes, len(runnable), time.perf_counter() - started)

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
                if write.settles:
                    with self._room:
                        self._in_hand -= write.settles
                        self._room.notify_all()
                self._writes.task_done()
        self._writes.task_done()

    def _claim(self, ids: set[uuid.UUID], *, first_attempt_only: bool) -> list[store.ClaimedJob]:
        def claim() -> list[store.ClaimedJob]:
            with self.sessions.begin() as session:
                return store.claim_jobs(
                    session, ids=ids, model=self.spec.name, worker=self.worker_name,
                    lease=self.lease, max_attempts=self.max_attempts, first_attempt_only=first_attempt_only,
                )

        claims = with_retries(claim, what=f"claim {self.spec.name} jobs")
        if self.on_claim is not None and claims:
            self.on_claim([c.created_at for c in claims])
        return claims

    def _parse(self, claims: list[store.ClaimedJob]) -> tuple[list[_Item], list[store.Outcome]]:
        """Validate claimed inputs again (rows and messages can bypass the producer)."""
        items: list[_Item] = []
        failures: list[store.Outcome] = []
        for claim in claims:
            try:
                job_input = parse_job_input(self.spec, claim.input)
                tokens = self.runner.estimate_tokens(job_input)
            except Exception as exc:  # an invalid input, or one the runner cannot size: it fails alone
                failures.append(_failure(claim, exc))
                continue
            items.append(_Item(claim, job_input, tokens))
        return items, failures

    def _record(self, outcomes: list[store.Outcome], computed: int, elapsed: float) -> None:
        """Write a batch's outcomes in one transaction (retried if the database drops); writer thread."""
        finished = [o for o in outcomes if o.status is not JobStatus.QUEUED]
        released = [(o.id, o.attempt) for o in outcomes if o.status is JobStatus.QUEUED]

        def write() -> None:
            with self.sessions.begin() as session:
                store.finish_jobs(session, outcomes=finished)
                store.release_jobs(session, claims=released)

        with_retries(write, what=f"write {self.spec.name} results")
        if self.on_batch is not None:
            self.on_batch(finished, computed, elapsed)

    def _token_bounded(self, items: list[_Item]) -> list[list[_Item]]:
        """Split length-sorted items so that padded size (count x longest) stays in budget."""
        groups: list[list[_Item]] = []
        current: list[_Item] = []
        for item in items:
            if current and item.tokens * (len(current) + 1) > self.spec.max_batch_tokens:
                groups.append(current)
                current = []
            current.append(item)
        if current:
            groups.append(current)
        return groups

    def _predict_isolating(self, items: list[_Item]) -> list[store.Outcome]:
        """Run a group; if it raises, split it in halves and retry, so that an input the model
        cannot handle fails alone and an out-of-memory batch is retried smaller."""
        try:
            outputs = self.runner.predict([item.input for item in items])
            if len(outputs) != len(items):
                raise RuntimeError(f"runner returned {len(outputs)} outputs for {len(items)} inputs")
        except Exception as exc:
            if len(items) == 1:
                claim = items[0].claim
                if is_out_of_memory(exc):
                    # Transient: memory may be free later. Back to queued; the sweeper re-publishes
                    # it with backoff, and max_attempts bounds the retries.
                    log.warning("job %s out of memory even alone; released for a later retry", claim.id)
                    return [store.Outcome(id=claim.id, attempt=claim.attempts, status=JobStatus.QUEUED)]
                log.warning("job %s failed in %s: %r", claim.id, self.spec.name, exc)
                return [_failure(claim, exc)]
            half = len(items) // 2
            return self._predict_isolating(items[:half]) + self._predict_isolating(items[half:])
        return [
            store.Outcome(id=item.claim.id, attempt=item.claim.attempts, status=JobStatus.SUCCEEDED, output=output)
            for item, output in zip(items, outputs, strict=True)
        ]


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


def _failure(claim: store.ClaimedJob, exc: Exception) -> store.Outcome:
    return store.Outcome(
        id=claim.id,
        attempt=claim.attempts,
        status=JobStatus.FAILED,
        error_type=type(exc).__name__,
        error_message=str(exc)[:2000] or repr(exc),
    )


__all__ = ["Batcher"]
