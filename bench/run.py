"""One benchmark run: which workers to start, in what order, and which raw run each measured run
is paired with. Fills `rows` (mode → median row) and, with profiling, `profiles`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from bench.environment import BenchEnvironment
from bench.measure import Harness, RawModel, Row, combine, requests_for
from bench.profile import Profile, summarize
from bench.texts import documents, short_texts
from bench.workers import naive_worker, textq_worker
from producer.registry import ModelSpec, default_registry

PAIRED = ("bulk", "per-request", "naive")  # compared with raw: each of their runs follows a raw run


class BenchRun:
    def __init__(self, args: argparse.Namespace, env: BenchEnvironment, output: Path) -> None:
        self.args = args
        self.env = env
        self.output = output
        self.modes = set(args.modes)
        self.spec: ModelSpec = default_registry().get(args.model)
        self.n: int = args.n or (200 if self.spec.task == "summarize" else 2000)
        self.texts = documents(self.n) if self.spec.task == "summarize" else short_texts(self.n)
        self.requests = requests_for(self.spec, self.texts)
        self.rows: dict[str, Row] = {}
        self.profiles: dict[str, str] = {}
        self._profiled: set[str] = set()
        self._raw_runs: list[Row] = []
        self._raw: RawModel | None = None
        self.harness = Harness(env.database_url, env.broker_url, timeout_s=args.timeout,
                               profile=self._profile if args.profile else None)

    def run(self) -> None:
        print(f"textq bench: model={self.spec.name} n={self.n} database={self.args.database} modes={','.join(self.args.modes)} "
              f"repeat={self.args.repeat} (cpus={os.cpu_count()}, load {os.getloadavg()[0]:.2f})", flush=True)
        try:
            if {"raw", "light"} & self.modes:
                self._raw = RawModel(self.spec, self.texts)
                self._raw.time_single_items()
            if {"bulk", "per-request", "light"} & self.modes:
                self._textq()
            if {"null-bulk", "null-per-request"} & self.modes:
                self._null()
            if "naive" in self.modes:
                self._naive()
            if self._raw is not None:
                self._finish_raw(self._raw)
        finally:
            self.harness.close()
            if self._raw is not None:
                self._raw.close()
        for label in sorted(self._profiled):
            path = self._profile_path(label)
            if path.exists():
                self.profiles[label] = summarize(path)

    def _textq(self) -> None:
        spec, h, args = self.spec, self.harness, self.args
        with textq_worker(self.env.env, spec.name, log_path=self.env.root / "worker.log") as w:
            h.warm_up(self.requests[: spec.max_batch_size])
            if "bulk" in self.modes:
                self._repeat("bulk", lambda: h.bulk("bulk", self.requests, w.pid))
            if "per-request" in self.modes:
                self._repeat("per-request", lambda: h.per_request("per-request", self.requests, w.pid, args.producers))
            if "light" in self.modes:
                light = (self.requests * (args.light_n // len(self.requests) + 1))[: args.light_n]
                self.rows["light"] = h.light(light, w.pid, max_wait_ms=spec.max_wait_ms)
                _progress(self.rows["light"])

    def _null(self) -> None:
        h, args = self.harness, self.args
        requests = requests_for(default_registry().get("null"), short_texts(args.null_n))
        with textq_worker(self.env.env, "null", log_path=self.env.root / "worker-null.log") as w:
            h.warm_up(requests[:256])
            if "null-bulk" in self.modes:
                self._repeat("null-bulk", lambda: h.bulk("null-bulk", requests, w.pid))
            if "null-per-request" in self.modes:
                self._repeat("null-per-request", lambda: h.per_request("null-per-request", requests, w.pid, args.producers))

    def _naive(self) -> None:
        h, args, spec = self.harness, self.args, self.spec
        with naive_worker(self.env.env, spec.name, pool=args.naive_pool, concurrency=args.naive_concurrency,
                          log_path=self.env.root / "worker-naive.log") as w:
            h.warm_up(self.requests[:8], naive=spec)
            self._repeat("naive", lambda: h.naive("naive", spec, self.texts[: args.naive_n], w.pid, args.producers))

    def _finish_raw(self, raw: RawModel) -> None:
        raw.time_single_items()  # early and late samples: the median of both
        single = None if raw.single_item_ms is None else round(raw.single_item_ms, 2)
        if "light" in self.rows:
            self.rows["light"].extra["single_item_ms"] = single
        if "raw" in self.modes:
            self._raw_runs += [raw.run(self.args.raw_s) for _ in range(max(self.args.repeat - len(self._raw_runs), 0))]
            self.rows["raw"] = combine(self._raw_runs)
            self.rows["raw"].extra["single_item_ms"] = single
            _progress(self.rows["raw"])

    def _repeat(self, mode: str, once: Callable[[], Row]) -> None:
        """`--repeat` runs of a mode, each one of PAIRED right after a raw run (same machine load)."""
        results = []
        for _ in range(self.args.repeat):
            probe = self._raw.run(self.args.raw_s) if self._raw is not None and "raw" in self.modes and mode in PAIRED else None
            row = once()
            if probe is not None:
                self._raw_runs.append(probe)
                row.x_raw = row.jobs_per_s / probe.jobs_per_s
            results.append(row)
        self.rows[mode] = combine(results)
        _progress(self.rows[mode])

    def _profile_path(self, label: str) -> Path:
        return self.output.with_name(f"{self.output.stem}-{label}.pyspy.txt")

    def _profile(self, pid: int, label: str) -> AbstractContextManager[object]:
        """py-spy on the first run of each mode only: it takes CPU from what it measures."""
        if label in self._profiled:
            return nullcontext()
        self._profiled.add(label)
        return Profile(pid, self._profile_path(label))


def _progress(row: Row) -> None:
    x_raw = f"  x raw {row.x_raw:.2f}" if row.x_raw is not None else ""
    print(f"  {row.mode:<17} {row.jobs_per_s:10,.1f} jobs/s{x_raw}  runs {row.runs_jobs_per_s or '-'}", flush=True)
