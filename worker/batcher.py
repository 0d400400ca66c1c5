"""The per-model pipeline: a claimer, a batcher (the only thread that touches the model) and a writer.

The claimer gathers handed-in ids into windows of up to a few batches and claims them, the batcher
sorts each window by length and runs the model on token-bounded groups (answering from the result
cache first, for models that keep one), the writer records the outcomes batch by batch; each stays
one window ahead of the next, so the model never waits for the database.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby

import torch
from sqlalchemy.orm import Session, sessionmaker

from db import store, webhooks
from db.models import utcnow
from db.result_cache import NewEntry
from db.store import Outcome, OutcomeKind
from producer.contract import JobInput, parse_job_input
from producer.errors import InvalidJobError
from producer.limits import DEFAULT_LIMITS, Limits
from worker.result_cache import ResultCache
from worker.retry import Retry, RetryPolicy
from worker.runners.base import Runner
from worker.runners.chunking import token_bounded

log = logging.getLogger(__name__)

# A claim takes, past its first max_batch_size jobs, what is already waiting, up to this many batches:
# sorted by length before it is cut into groups, a larger window pads far less on mixed-length
# traffic (docs/backends.md). Nothing waits to fill it, so light load still claims small batches.
WINDOW_BATCHES = 4
# Jobs in hand, in windows, before hand_in blocks: one computing, one claimed, one forming, no more.
HIGH_WATER_WINDOWS = 3
# While no batch comes, the runner's between-batch upkeep (a version switch) still runs this often.
UPKEEP_INTERVAL_S = 1.0


@dataclass(slots=True)
class _Item:
    claim: store.ClaimedJob
    input: JobInput
    tokens: int
    cache_key: str | None = None  # models with a result cache only


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
    # Computed jobs whose outputs the result cache keeps, once they are recorded as succeeded.
    remember: list[NewEntry] = field(default_factory=list)


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
        result_cache: ResultCache | None = None,
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
        self.result_cache = result_cache
        self.window = WINDOW_BATCHES * self.spec.max_batch_size
        self.high_water = HIGH_WATER_WINDOWS * self.window
        self._inbox: queue.SimpleQueue[uuid.UUID | None] = queue.SimpleQueue()
        # One claimed window waits while the model runs another: claims stay one window ahead.
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
        while len(ids) < self.window:
            # Up to a batch, waiting out max_wait_ms; past it, only what is already waiting.
            remaining = deadline - time.monotonic() if len(ids) < self.spec.max_batch_size else 0.0
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
        for write in self._compute(batch.items, list(batch.failures)):
            self._writes.put(write)
        # Jobs tried before may have killed a worker: each runs alone, after the batch is committed.
        if batch.suspects:
            self._writes.join()
        for job_id in batch.suspects:
            for write in self._compute(*self._parse(self._claim({job_id}, first_attempt_only=False))):
                self._writes.put(write)
                self._writes.join()

    def _compute(self, items: list[_Item], outcomes: list[Outcome]) -> Iterator[_Write]:
        """Run `items` in length-sorted, token-bounded groups, the most urgent priority first; a write
        per `max_batch_size` outcomes or so (a window's first results are written while the rest
        compute). `outcomes` go with the first."""
        runnable = sorted(_unexpired(items, outcomes), key=lambda item: item.tokens)
        remember: list[NewEntry] = []
        computed, started = 0, time.perf_counter()
        for runner, same_version in self._by_version(runnable, outcomes):
            todo, followers = self._from_cache(runner, same_version, outcomes)
            for group in self._token_bounded(todo):
                # A window's later groups wait for its earlier ones: a deadline may pass meanwhile.
                group = _unexpired(group, outcomes)
                if not group:
                    continue
                done = self._predict_isolating(group, runner)
                remember += _entries(group, done)
                outcomes += done + self._followers_of(done, followers, runner, remember)
                computed += len(group)
                if len(outcomes) >= self.spec.max_batch_size:
                    yield _Write(outcomes, computed, time.perf_counter() - started, remember=remember)
                    outcomes, remember, computed, started = [], [], 0, time.perf_counter()
        if outcomes:
            yield _Write(outcomes, computed, time.perf_counter() - started, remember=remember)

    def _from_cache(self, runner: Runner, items: list[_Item],
                    outcomes: list[Outcome]) -> tuple[list[_Item], dict[uuid.UUID, list[_Item]]]:
        """The items to compute; `outcomes` gets those the result cache answers. Identical items of
        one window are computed once: the first (its id keys the dict) answers the rest after it."""
        if self.result_cache is None:
            return items, {}
        for item in items:
            item.cache_key = self.result_cache.key(item.claim, item.input, runner.version)
        hits = self.result_cache.lookup({item.cache_key for item in items if item.cache_key is not None})
        todo: list[_Item] = []
        first: dict[str | None, _Item] = {}
        followers: dict[uuid.UUID, list[_Item]] = {}
        for item in items:
            hit = hits.get(item.cache_key or "")
            if hit is not None:
                outcomes.append(Outcome.succeeded(item.claim, hit.output, model_version=hit.model_version,
                                                  cached_from=hit.source_job_id))
            elif item.cache_key in first:
                followers.setdefault(first[item.cache_key].claim.id, []).append(item)
            else:
                first[item.cache_key] = item
                todo.append(item)
        return todo, followers

    def _followers_of(self, done: list[Outcome], followers: dict[uuid.UUID, list[_Item]], runner: Runner,
                      remember: list[NewEntry]) -> list[Outcome]:
        """Outcomes of the items identical to those just computed: the same output if it succeeded;
        computed themselves if not (an error of the first is not theirs to share)."""
        outcomes: list[Outcome] = []
        for first in done:
            waiting = followers.pop(first.id, [])
            if first.kind is OutcomeKind.SUCCEEDED:
                outcomes += [Outcome.succeeded(item.claim, first.output, model_version=first.model_version,
                                               cached_from=first.id) for item in waiting]
            elif waiting:
                computed = self._predict_isolating(waiting, runner)
                remember += _entries(waiting, computed)
                outcomes += computed
        return outcomes

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
        """Split items, most urgent priority first and shortest first within one, so that padded size
        (count x longest) stays in budget. Groups never mix priorities: a window claimed under a
        backlog must not hold an urgent job back behind the backlog's shorter texts."""
        def priority(item: _Item) -> int:
            return item.claim.priority

        groups: list[list[_Item]] = []
        for _, same in groupby(sorted(items, key=priority), key=priority):
            members = list(same)
            bounded = token_bounded([item.tokens for item in members], max_tokens=self.spec.max_batch_tokens,
                                    max_items=self.spec.max_batch_size)
            groups += [[members[i] for i in group] for group in bounded]
        return groups

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
                    self._record(write)
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

    def _record(self, write: _Write) -> None:
        """Write a batch's finished and released outcomes in one transaction; writer thread."""
        finished = [o for o in write.outcomes if o.finished]
        released = [o for o in write.outcomes if not o.finished]

        def transaction() -> None:
            with self.sessions.begin() as session:
                store.finish_jobs(session, outcomes=finished)
                store.release_jobs(session, outcomes=released)
                # In the result's transaction: never lost. Skipped (no statement) when nothing would be queued.
                everyone = self._endpoints.any(session)
                webhooks.queue_job_events(session, job_ids=[o.id for o in finished if everyone or o.webhook])
                if self.result_cache is not None:
                    self.result_cache.remember(session, write.remember)

        self.policy.with_retries(transaction, what=f"write {self.spec.name} results")
        if self.result_cache is not None:
            self.result_cache.prune_if_due()
        if self.on_batch is not None:
            self.on_batch(finished, write.computed, write.seconds)
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


def _unexpired(items: list[_Item], outcomes: list[Outcome]) -> list[_Item]:
    """The items still within their deadline; the others end unrun, their outcomes added to `outcomes`.
    Claimed windows ahead, a job may pass its deadline while it waits."""
    now = utcnow()
    runnable: list[_Item] = []
    for item in items:
        if item.claim.expires_at is not None and item.claim.expires_at < now:
            outcomes.append(Outcome.expired(item.claim))
        else:
            runnable.append(item)
    return runnable


def _entries(items: list[_Item], outcomes: list[Outcome]) -> list[NewEntry]:
    """Result cache entries for the computed items that succeeded (models with a cache only)."""
    return [NewEntry(item.cache_key, o.id) for item, o in zip(items, outcomes, strict=True)
            if item.cache_key is not None and o.kind is OutcomeKind.SUCCEEDED]


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _failure(claim: store.ClaimedJob, exc: Exception) -> Outcome:
    return Outcome.failed(claim, error_type=type(exc).__name__, error_message=str(exc)[:2000] or repr(exc))


__all__ = ["Batcher"]
