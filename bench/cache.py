"""`python -m bench.cache`: bulk jobs/s with and without the result cache on a workload that repeats texts."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from datetime import datetime
from pathlib import Path

from bench.corpus import mixed_length_texts
from bench.measure import Row, combine
from bench.report import write_json

RESULTS = Path(__file__).resolve().parent / "results"
DESCRIPTION = """\
Bulk (Client.submit_many -> one worker -> every row finished) on the mixed-length corpus where a
share of the jobs (--repeated) repeat the text of an earlier job, uniformly chosen, like a feed
that sees the same reviews or headlines again. The same model runs twice in one worker: once
without and once with "result_cache": true. Every run starts with an empty cache; each repeat runs
both modes in turn. Numbers are medians.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m bench.cache --n 1000 --repeated 0.3 --repeat 3")
    parser.add_argument("--model", default="sentiment", help="registry model (default: sentiment)")
    parser.add_argument("--n", type=int, default=1000, help="jobs per run (default: 1000)")
    parser.add_argument("--repeated", type=float, default=0.3, help="share of jobs repeating an earlier text (default: 0.3)")
    parser.add_argument("--seed", type=int, default=11, help="corpus and repeats seed (default: 11)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode (default: 3)")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one run's jobs (default: 900)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: bench/results/<time>-cache-<model>.json)")
    args = parser.parse_args(argv)
    if not 0 <= args.repeated < 1:
        parser.error("--repeated is a share: 0 <= share < 1")
    return args


def repeating_texts(n: int, repeated: float, seed: int) -> list[str]:
    """`n` texts in arrival order, a `repeated` share of them an earlier text again (none before the first)."""
    rng = random.Random(seed)
    fresh = iter(mixed_length_texts(n, seed))
    texts: list[str] = []
    for _ in range(n):
        texts.append(rng.choice(texts) if texts and rng.random() < repeated else next(fresh))
    return texts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from producer.registry import load_registry

    models_file = os.environ.get("TEXTQ_MODELS_FILE")
    spec = load_registry(Path(models_file) if models_file else None).get(args.model)
    plain = spec.model_copy(update={"name": f"{spec.name}-plain", "result_cache": False})
    cached = spec.model_copy(update={"name": f"{spec.name}-cached", "result_cache": True})
    texts = repeating_texts(args.n, args.repeated, args.seed)
    from bench.environment import NULL_SPEC, BenchEnvironment

    with BenchEnvironment(args.database) as env:
        env.models_file.write_text(json.dumps([NULL_SPEC, plain.model_dump(mode="json"), cached.model_dump(mode="json")]))
        from sqlalchemy import delete

        from bench.measure import Harness, requests_for
        from db.engine import make_engine
        from db.models import CachedResult
        from producer.worker_process import WorkerProcess

        engine = make_engine(env.database_url)

        def empty_cache() -> None:
            with engine.begin() as conn:
                conn.execute(delete(CachedResult))

        harness = Harness(env.database_url, env.broker_url, timeout_s=args.timeout)
        runs: dict[str, list[Row]] = {"no-cache": [], "cache": []}
        with WorkerProcess(env=env.env, models=[plain.name, cached.name], log_path=env.root / "worker.log",
                           name="bench-cache") as worker:
            for s in (plain, cached):
                harness.warm_up(requests_for(s, texts[: s.max_batch_size]))
            for repeat in range(args.repeat):
                for mode, s in (("no-cache", plain), ("cache", cached)):
                    empty_cache()
                    runs[mode].append(harness.bulk(mode, requests_for(s, texts), worker.pid))
                    row = runs[mode][-1]
                    print(f"run {repeat + 1}/{args.repeat} {mode:<9} {row.jobs_per_s:8.1f} jobs/s  "
                          f"cache hits {row.extra['cache_hits']}", flush=True)
        harness.close()
        engine.dispose()
    rows = {m: combine(r) for m, r in runs.items()}
    ratio = rows["cache"].jobs_per_s / rows["no-cache"].jobs_per_s
    distinct = len(set(texts))
    print(f"\n{spec.name} ({spec.backend}), {args.n} jobs, {args.n - distinct} repeating an earlier text "
          f"({(args.n - distinct) / args.n:.0%}), database {args.database}")
    for mode, row in rows.items():
        print(f"{mode:<9} {row.jobs_per_s:8.1f} jobs/s  p50 {row.p50_ms:7.0f} ms  cache hits {row.extra['cache_hits']:>5}"
              f"  runs {row.runs_jobs_per_s}")
    print(f"cache / no-cache: {ratio:.2f}x")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output: Path = args.output or RESULTS / f"{stamp}-cache-{spec.name}.json"
    meta = {"started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "jobs_repeating": args.n - distinct, "ratio": round(ratio, 3), "spec": spec.model_dump(),
            "loadavg_end": os.getloadavg()}
    write_json(output, meta, rows, [])
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
