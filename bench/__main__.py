"""`python -m bench`: textq against the model's own speed, a hand-wired Celery task and a null model."""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.environment import BenchEnvironment
from bench.report import render, targets, write_json

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
peak RSS is the worker process and its children. Each bulk, per-request and naive run
follows a raw run of --raw-s seconds, and "x raw" is the median of those paired ratios:
on a shared machine the model's speed swings with other load.
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
    parser.add_argument("--raw-s", type=float, default=6.0, help="seconds of each raw run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode; tables show medians")
    parser.add_argument("--producers", type=int, default=4, help="producer threads for per-request and naive")
    parser.add_argument("--naive-pool", choices=("threads", "solo"), default="threads", help="naive worker pool")
    parser.add_argument("--naive-concurrency", type=int, default=4, help="naive worker -c (threads pool)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="environment setting for the workers and this process, e.g. TEXTQ_TORCH_THREADS=1 (repeatable)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one run's jobs")
    parser.add_argument("--profile", action="store_true",
                        help="sample the worker with py-spy during the first run of each mode and print where time goes")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: bench/results/<time>-<model>-<db>.json)")
    args = parser.parse_args(argv)
    args.modes = _modes(parser, args.modes)
    if any("=" not in item for item in args.settings):
        parser.error("--set takes KEY=VALUE")
    args.settings = dict(item.split("=", 1) for item in args.settings)
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
    meta: dict[str, Any] = {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version()},
        "git": {"commit": _git("rev-parse", "--short", "HEAD"),
                # The tree others edit while this runs: which uncommitted state was measured.
                "diff_sha1": hashlib.sha1(_git("diff", "HEAD", "--", "worker", "producer", "db").encode()).hexdigest()[:12]},
    }
    with BenchEnvironment(args.database, overrides=args.settings) as env:
        from bench.run import BenchRun  # imports textq settings: only once TEXTQ_* point at this run's services

        bench = BenchRun(args, env, output)
        meta["spec"] = bench.spec.model_dump()
        bench.run()
    rows = {m: bench.rows[m] for m in MODES if m in bench.rows}
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["profiles"] = bench.profiles
    found = targets(rows)
    print()
    print(render(rows, found))
    for label, summary in bench.profiles.items():
        print(f"\npy-spy during {label} (that run is slowed by the profiler):\n{summary}")
    write_json(output, meta, rows, found)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
