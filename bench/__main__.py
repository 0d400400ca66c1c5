"""`python -m bench`: textq against the model's own speed, a hand-wired Celery task and a null model."""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.environment import BenchEnvironment
from bench.measure import Harness, RawModel, Request, Row, combine, requests_for
from bench.report import render, targets, write_json
from bench.texts import documents, short_texts

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("raw", "bulk", "per-request", "light", "naive", "null-bulk", "null-per-request")
DESCRIPTION = """\
Benchmark textq end to end on real Redis and a real database, for one model.

modes:
  raw               the runner's own batched forward pass in this process (the limit)
  bulk              Client.submit_many of all jobs -> worker -> every row finished
  per-request       one job per call from --producers threads, each with its own Client
  light             one job at a time, sequentially: latency vs the model's batch-of-1 time
  naive             a hand-wired Celery task, one text per message (bench/naive.py)
  null-bulk         bulk with model 'null': queue + database overhead alone
  null-per-request  per-request with model 'null'

Throughput runs from the first submit to the last finished_at; latency is created_at ->
finished_at per job, both from the jobs table. Numbers are medians of --repeat runs;
peak RSS is the worker process and its children.
"""
ALIASES = {"null": ("null-bulk", "null-per-request"), "all": MODES}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=DESCRIPTION,
        epilog="example: python -m bench --database sqlite --modes raw,bulk,null --repeat 1",
        formatter_class=_Formatter,
    )
    parser.add_argument("--model", default="sentiment", help="registry model to measure (sentiment, summarize, ...)")
    parser.add_argument("--n", type=int, default=None,
                        help="jobs per run (default: 2000 texts to classify, 200 documents to summarize)")
    parser.add_argument("--null-n", type=int, default=2000, help="jobs per null-model run")
    parser.add_argument("--naive-n", type=int, default=500, help="jobs per naive run (it is slow; throughput is steady by then)")
    parser.add_argument("--light-n", type=int, default=50, help="sequential jobs in the light-load run")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql",
                        help="a fresh PostgreSQL database (dropped at the end) or a temporary SQLite file")
    parser.add_argument("--modes", default="all", help=f"comma-separated subset of {', '.join(MODES)} (or 'null', 'all')")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; tables show medians")
    parser.add_argument("--producers", type=int, default=4, help="producer threads for per-request and naive")
    parser.add_argument("--concurrency", type=int, default=None, help="textq worker -c (default: TEXTQ_WORKER_CONCURRENCY)")
    parser.add_argument("--naive-pool", choices=("threads", "solo"), default="threads", help="naive worker pool")
    parser.add_argument("--naive-concurrency", type=int, default=4, help="naive worker -c (threads pool)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one run's jobs")
    parser.add_argument("--profile", action="store_true",
                        help="sample the worker with py-spy during the first run of each mode and print where time goes")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: bench/results/<time>-<model>-<db>.json)")
    args = parser.parse_args(argv)
    args.modes = _modes(parser, args.modes)
    return args


def _modes(parser: argparse.ArgumentParser, text: str) -> list[str]:
    chosen: list[str] = []
    for name in (m.strip() for m in text.split(",") if m.strip()):
        expanded = ALIASES.get(name, (name,))
        unknown = [m for m in expanded if m not in MODES]
        if unknown:
            parser.error(f"unknown mode {name!r}; choose from {', '.join(MODES)}, null, all")
        chosen += [m for m in expanded if m not in chosen]
    return [m for m in MODES if m in chosen]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=RESULTS.parent.parent)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output: Path = args.output or RESULTS / f"{stamp}-{args.model}-{args.database}.json"
    rows: dict[str, Row] = {}
    profiles: dict[str, str] = {}
    meta: dict[str, Any] = {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version()},
        "git": {"commit": _git("rev-parse", "--short", "HEAD"),
                # The tree others edit while this runs: which uncommitted state was measured.
                "diff_sha1": hashlib.sha1(_git("diff", "HEAD", "--", "worker", "producer", "db").encode()).hexdigest()[:12]},
    }
    with BenchEnvironment(args.database) as env:
        # Imported only now: settings and the registry read TEXTQ_* (set by the environment) once.
        from bench.profile import Profile, summarize
        from bench.workers import naive_worker, textq_worker
        from producer.registry import default_registry

        spec = default_registry().get(args.model)
        n = args.n or (200 if spec.task == "summarize" else 2000)
        texts = documents(n) if spec.task == "summarize" else short_texts(n)
        requests = requests_for(spec, texts)
        meta["spec"] = spec.model_dump()
        meta["database"] = args.database
        print(f"textq bench: model={spec.name} n={n} database={args.database} modes={','.join(args.modes)} "
              f"repeat={args.repeat} (cpus={os.cpu_count()}, load {os.getloadavg()[0]:.2f})", flush=True)

        raw_model: RawModel | None = None
        raw_runs: list[Row] = []
        if {"raw", "light"} & set(args.modes):
            raw_model = RawModel(spec, texts)
            raw_model.time_single_items()
            # Most raw runs first, the rest last: on a shared machine they bracket the others.
            raw_runs += [raw_model.run() for _ in range((args.repeat + 1) // 2 if "raw" in args.modes else 0)]

        profiled: set[str] = set()

        def profile(pid: int, label: str) -> AbstractContextManager[object]:
            if label in profiled:
                return nullcontext()
            profiled.add(label)
            return Profile(pid, output.with_name(f"{output.stem}-{label}.pyspy.txt"))

        harness = Harness(env.database_url, env.broker_url, timeout_s=args.timeout, profile=profile if args.profile else None)
        try:
            def runs(mode: str, once: Callable[[], Row]) -> None:
                rows[mode] = combine([once() for _ in range(args.repeat)])
                _progress(rows[mode])

            if {"bulk", "per-request", "light"} & set(args.modes):
                with textq_worker(env.env, spec.name, concurrency=args.concurrency, log_path=env.root / "worker.log") as w:
                    harness.warm_up(requests[: spec.max_batch_size])
                    if "bulk" in args.modes:
                        runs("bulk", lambda: harness.bulk("bulk", requests, w.pid))
                    if "per-request" in args.modes:
                        runs("per-request", lambda: harness.per_request("per-request", requests, w.pid, args.producers))
                    if "light" in args.modes:
                        light_requests = (requests * (args.light_n // len(requests) + 1))[: args.light_n]
                        rows["light"] = harness.light(light_requests, w.pid, max_wait_ms=spec.max_wait_ms)
                        _progress(rows["light"])
            if {"null-bulk", "null-per-request"} & set(args.modes):
                null_requests: list[Request] = requests_for(default_registry().get("null"), short_texts(args.null_n))
                with textq_worker(env.env, "null", concurrency=args.concurrency, log_path=env.root / "worker-null.log") as w:
                    harness.warm_up(null_requests[:256])
                    if "null-bulk" in args.modes:
                        runs("null-bulk", lambda: harness.bulk("null-bulk", null_requests, w.pid))
                    if "null-per-request" in args.modes:
                        runs("null-per-request",
                             lambda: harness.per_request("null-per-request", null_requests, w.pid, args.producers))
            if "naive" in args.modes:
                with naive_worker(env.env, spec.name, pool=args.naive_pool, concurrency=args.naive_concurrency,
                                  log_path=env.root / "worker-naive.log") as w:
                    harness.warm_up(requests[:8], naive=spec)
                    runs("naive", lambda: harness.naive("naive", spec, texts[: args.naive_n], w.pid, args.producers))
            if raw_model is not None:
                raw_model.time_single_items()
                if "light" in rows:
                    rows["light"].extra["single_item_ms"] = _round(raw_model.single_item_ms)
            if raw_model is not None and "raw" in args.modes:
                raw_runs += [raw_model.run() for _ in range(args.repeat - len(raw_runs))]
                rows["raw"] = combine(raw_runs)
                rows["raw"].extra["single_item_ms"] = _round(raw_model.single_item_ms)
                _progress(rows["raw"])
        finally:
            harness.close()
            if raw_model is not None:
                raw_model.close()
        if args.profile:
            for label in sorted(profiled):
                path = output.with_name(f"{output.stem}-{label}.pyspy.txt")
                if path.exists():
                    profiles[label] = summarize(path)

    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["profiles"] = profiles
    rows = {m: rows[m] for m in MODES if m in rows}
    found = targets(rows)
    print()
    print(render(rows, found))
    for mode, summary in profiles.items():
        print(f"\nprofile of the worker during {mode}:\n{summary}")
    write_json(output, meta, rows, found)
    print(f"\nwrote {output}")
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _progress(row: Row) -> None:
    print(f"  {row.mode:<17} {row.jobs_per_s:10,.1f} jobs/s  runs {row.runs_jobs_per_s or '-'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
