"""The measurements. Each returns one `Row`; rows of repeated runs combine into their medians."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from bench.cpu import CpuMeter
from bench.ledger import Ledger, Timings
from bench.rss import PeakRSS
from producer.client import Client
from producer.registry import ModelSpec

Request = dict[str, object]


@dataclass
class Row:
    mode: str
    model: str
    jobs: int
    jobs_per_s: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    # jobs/s over the raw model's jobs/s measured just before this run (paired: same machine load)
    x_raw: float | None = None
    runs_jobs_per_s: list[float] = field(default_factory=list)
    runs_x_raw: list[float] = field(default_factory=list)
    # CPU time per job by process group (bench/cpu.py): where the cores went
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def combine(rows: Sequence[Row]) -> Row:
    """Medians over repeated runs (peak RSS: the highest); every run's jobs/s is kept."""
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    def median_like(key: str, example: object) -> object:
        if not isinstance(example, int | float) or isinstance(example, bool):
            return example
        value = median([r.extra.get(key) for r in rows])
        return round(value) if isinstance(example, int) and value is not None else value

    first = rows[0]
    extra = {k: median_like(k, v) for k, v in first.extra.items()}
    return replace(
        first,
        jobs_per_s=statistics.median(r.jobs_per_s for r in rows),
        p50_ms=median([r.p50_ms for r in rows]),
        p95_ms=median([r.p95_ms for r in rows]),
        p99_ms=median([r.p99_ms for r in rows]),
        peak_rss_mb=max((r.peak_rss_mb for r in rows if r.peak_rss_mb is not None), default=None),
        x_raw=median([r.x_raw for r in rows]),
        runs_jobs_per_s=[round(r.jobs_per_s, 1) for r in rows],
        runs_x_raw=[round(r.x_raw, 3) for r in rows if r.x_raw is not None],
        cpu_ms_per_job={k: round(statistics.median(r.cpu_ms_per_job.get(k, 0.0) for r in rows), 2) for k in first.cpu_ms_per_job},
        extra=extra,
    )


def requests_for(spec: ModelSpec, texts: Sequence[str]) -> list[Request]:
    if spec.task == "summarize":
        return [{"task": "summarize", "model": spec.name, "text": t, "max_sentences": 3} for t in texts]
    return [{"task": "classify", "model": spec.name, "text": t} for t in texts]


# -- in process: the limit -------------------------------------------------------------------------
class RawModel:
    """The runner in this process (the limit), kept loaded so a raw run can precede each measured run."""

    def __init__(self, spec: ModelSpec, texts: Sequence[str]) -> None:
        import torch

        from producer.contract import INPUT_OF_TASK
        from worker.runners import create_runner
        from worker.settings import WorkerSettings

        torch.set_num_threads(WorkerSettings().torch_threads)
        self.spec = spec
        self.runner = create_runner(spec)
        self.runner.setup()
        self.inputs: list[Any] = [INPUT_OF_TASK[spec.task](text=t) for t in texts]
        self.runner.predict(self.inputs[: spec.max_batch_size])  # warm-up
        self.single_ms: list[float] = []

    def run(self, min_s: float, *, min_items: int = 0) -> Row:
        """Batches in order (cycling through the texts) for at least `min_s` seconds, 3 batches and
        `min_items` items (len(texts): each text once)."""
        step = self.spec.max_batch_size
        batches = [self.inputs[i : i + step] for i in range(0, len(self.inputs), step)]
        done = calls = 0
        with PeakRSS(os.getpid(), children=False) as rss, tqdm(desc="raw", unit="job", leave=False, dynamic_ncols=True) as bar:
            started = time.perf_counter()
            while calls < 3 or done < min_items or time.perf_counter() - started < min_s:
                batch = batches[calls % len(batches)]
                self.runner.predict(batch)
                calls += 1
                done += len(batch)
                bar.update(len(batch))
            elapsed = time.perf_counter() - started
        return Row("raw", self.spec.name, done, done / elapsed, peak_rss_mb=rss.peak_mb,
                   extra={"batch_size": step, "load": round(os.getloadavg()[0], 2)})

    def time_single_items(self, count: int = 25) -> None:
        """Time `count` predictions of one item each; call it early and late on a shared machine."""
        for item in self.inputs[len(self.single_ms) : len(self.single_ms) + count]:
            started = time.perf_counter()
            self.runner.predict([item])
            self.single_ms.append((time.perf_counter() - started) * 1000)

    @property
    def single_item_ms(self) -> float | None:
        return statistics.median(self.single_ms) if self.single_ms else None

    def close(self) -> None:
        del self.runner
        gc.collect()


# -- through a worker ------------------------------------------------------------------------------
class Harness:
    """Runs workloads against a started worker (textq or naive) and reads the results back."""

    def __init__(self, database_url: str, broker_url: str, *, timeout_s: float,
                 profile: Callable[[int, str], AbstractContextManager[object]] | None = None) -> None:
        self.database_url = database_url
        self.broker_url = broker_url
        self.timeout_s = timeout_s
        self.profile = profile
        self.ledger = Ledger(database_url)
        self.client = Client(database_url=database_url, broker_url=broker_url)

    def close(self) -> None:
        self.client.close()
        self.ledger.close()

    def warm_up(self, requests: Sequence[Request], *, naive: ModelSpec | None = None) -> None:
        """A few jobs first, so that connection pools and the first forward pass are not measured."""
        self.ledger.reset()
        if naive is None:
            self.client.submit_many(list(requests))
        else:
            from bench.naive import NaiveProducer

            sender = NaiveProducer(self.database_url, self.broker_url, naive.name, naive.task)
            for r in requests:
                sender.submit(str(r["text"]))
            sender.close()
        self.ledger.wait(len(requests), timeout_s=self.timeout_s, desc="warm-up")
        if (failure := self.ledger.first_failure()) is not None:
            raise RuntimeError(f"a warm-up job of {requests[0]['model']} did not succeed ({failure}): see the worker's log")
        self.ledger.reset()
        # A full collection of this heap paused the producers for ~70 ms now and then (docs/design.md).
        gc.collect()
        gc.freeze()

    def _measure(self, mode: str, model: str, count: int, pid: int, submit: Callable[[], None]) -> Row:
        """Empty the table, run `submit` in a thread while waiting for every row, read the timings."""
        self.ledger.reset()
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                submit()
            except BaseException as exc:
                errors.append(exc)

        with ExitStack() as profiling:
            if self.profile is not None:  # the worker, and this process (the producers)
                profiling.enter_context(self.profile(pid, f"{mode}-worker"))
                profiling.enter_context(self.profile(os.getpid(), f"{mode}-producer"))
            rss = profiling.enter_context(PeakRSS(pid))
            cpu = profiling.enter_context(CpuMeter(pid))
            started = datetime.now(UTC)
            thread = threading.Thread(target=guarded, name=f"{mode}-submit")
            thread.start()
            self.ledger.wait(count, timeout_s=self.timeout_s, desc=mode)
            thread.join()
        if errors:
            raise errors[0]
        timings = self.ledger.timings(started, count)
        self.ledger.reset()
        row = _row(mode, model, timings, rss.peak_mb)
        row.cpu_ms_per_job = cpu.ms_per_job(count)
        return row

    def bulk(self, mode: str, requests: Sequence[Request], pid: int) -> Row:
        limit = self.client.settings.max_jobs_per_submit
        submit_s: list[float] = []

        def submit() -> None:
            started = time.perf_counter()
            for i in range(0, len(requests), limit):
                self.client.submit_many(list(requests[i : i + limit]))
            submit_s.append(time.perf_counter() - started)

        row = self._measure(mode, str(requests[0]["model"]), len(requests), pid, submit)
        row.extra["submit_s"] = round(submit_s[0], 3)
        return row

    def per_request(self, mode: str, requests: Sequence[Request], pid: int, producers: int) -> Row:
        """One job per call from `producers` threads, each with its own Client: the web pattern."""
        clients = [Client(database_url=self.database_url, broker_url=self.broker_url) for _ in range(producers)]
        try:
            row = self._measure(mode, str(requests[0]["model"]), len(requests), pid,
                                lambda: _fan_out(producers, lambda i: [clients[i].submit(r) for r in requests[i::producers]]))
        finally:
            for c in clients:
                c.close()
        row.extra["producers"] = producers
        return row

    def naive(self, mode: str, spec: ModelSpec, texts: Sequence[str], pid: int, producers: int) -> Row:
        from bench.naive import NaiveProducer

        senders = [NaiveProducer(self.database_url, self.broker_url, spec.name, spec.task) for _ in range(producers)]
        try:
            row = self._measure(mode, spec.name, len(texts), pid,
                                lambda: _fan_out(producers, lambda i: [senders[i].submit(t) for t in texts[i::producers]]))
        finally:
            for s in senders:
                s.close()
        row.extra["producers"] = producers
        return row

    def light(self, requests: Sequence[Request], pid: int, *, max_wait_ms: float) -> Row:
        """One job at a time: submit, wait for it, next. Latency at no load."""
        def submit() -> None:
            for request in requests:
                view = self.client.submit(request)
                self.client.wait(view.id, timeout=self.timeout_s)

        row = self._measure("light", str(requests[0]["model"]), len(requests), pid, submit)
        row.extra["max_wait_ms"] = max_wait_ms
        return row


def _fan_out(threads: int, work: Callable[[int], object]) -> None:
    """Run `work(i)` for i in range(threads) concurrently, re-raising the first failure."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=guarded, args=(i,), name=f"producer-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def _row(mode: str, model: str, t: Timings, rss_mb: float) -> Row:
    return Row(mode=mode, model=model, jobs=t.jobs, jobs_per_s=t.jobs_per_s, p50_ms=t.p50_ms, p95_ms=t.p95_ms,
               p99_ms=t.p99_ms, peak_rss_mb=rss_mb,
               extra={"succeeded": t.succeeded, "unfinished": t.unfinished, "elapsed_s": round(t.elapsed_s, 3),
                      "p50_wait_ms": round(t.p50_wait_ms, 1), "p50_run_ms": round(t.p50_run_ms, 1),
                      "mean_batch": round(t.mean_batch, 1), "cache_hits": t.cache_hits,
                      "load": round(os.getloadavg()[0], 2)})
