"""`python -m bench.backends`: the model on a mixed-length corpus, by hand and through textq on each backend, in one run."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from bench.corpus import mixed_length_texts
from bench.measure import Row, combine
from bench.report import write_json
from producer.registry import ModelSpec
from worker.batcher import WINDOW_BATCHES
from worker.runners.chunking import token_bounded

RESULTS = Path(__file__).resolve().parent / "results"
# What runs the forward pass, by name: "torch" (float32) is the reference the others are compared to.
# torch-bf16 computes in bfloat16 where the CPU has native bf16 (AVX512-BF16, AMX), else in float32.
VARIANTS: dict[str, dict[str, str]] = {
    "torch": {"backend": "torch", "dtype": "float32"},
    "onnx": {"backend": "onnx", "dtype": "float32"},
    "onnx-int8": {"backend": "onnx-int8", "dtype": "float32"},
    "torch-bf16": {"backend": "torch", "dtype": "bfloat16"},
}
ENCODER_RUNNERS = ("prototype", "zero_shot")
ZERO_SHOT_LABELS = ["business", "sports", "politics", "science", "technology"]
DESCRIPTION = """\
The model on the mixed-length corpus (bench/corpus.py), by hand and through textq, on each backend.

modes, in this process (no queue):
  vanilla-arrival    plain transformers: tokenize, forward, mean-pool in batches of --batch-size in
                     arrival order (what a user writes by hand: the reference, 1.00x)
  vanilla-sorted     the same with the texts sorted by length first
  raw-BACKEND        the runner's predict() on each backend, batched as a busy textq batcher does:
                     claims of WINDOW_BATCHES x max_batch_size in arrival order, each sorted by
                     length and cut by max_batch_tokens and max_batch_size
modes through the queue (real Redis, database and worker processes; --no-queue skips them):
  bulk-BACKEND       Client.submit_many of the corpus -> a textq worker -> every row finished
  per-request-BACKEND  one job per call from --producers threads, each with its own Client
  naive              a hand-wired Celery task on plain PyTorch, one text per message (--naive-n texts)

Each repeat runs every mode once, in turn, each backend's raw run just before its runs through the
queue, so machine load hits them alike. Numbers are medians; "x raw" is the median of each run's
ratio to the raw run beside it (the machine's speed drifts within minutes).
Label agreement with raw-torch is measured on the same corpus (classification models).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m bench.backends --n 1000 --repeat 3")
    parser.add_argument("--model", default="sentiment", help="registry model with an encoder runner (default: sentiment)")
    parser.add_argument("--n", type=int, default=1000, help="texts in the corpus (default: 1000)")
    parser.add_argument("--seed", type=int, default=11, help="corpus seed (default: 11)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode; medians are reported (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="vanilla batch size (default: 32)")
    parser.add_argument("--backends", default=",".join(VARIANTS), help=f"comma-separated (default: {','.join(VARIANTS)})")
    parser.add_argument("--no-queue", dest="queue", action="store_false", help="in-process modes only")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql",
                        help="the queue modes' database (default: postgresql)")
    parser.add_argument("--producers", type=int, default=4, help="producer threads for per-request and naive (default: 4)")
    parser.add_argument("--naive-n", type=int, default=300, help="texts per naive run (default: 300)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one run's jobs (default: 900)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: bench/results/<time>-backends-<model>.json)")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(VARIANTS)}")
    return args


class Vanilla:
    """What a user writes by hand with transformers: the reference."""

    def __init__(self, source: str, max_tokens: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).eval()
        self.max_tokens = max_tokens

    def embed(self, texts: Sequence[str], batch_size: int, *, sort: bool) -> None:
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else list(range(len(texts)))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                enc = self.tokenizer([texts[i] for i in order[start : start + batch_size]], padding=True,
                                     truncation=True, max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def textq_groups(lengths: Sequence[int], spec: ModelSpec) -> list[list[int]]:
    """Index groups as a busy batcher forms them: claims of WINDOW_BATCHES batches in arrival order,
    each sorted and cut by the worker's token_bounded."""
    window = WINDOW_BATCHES * spec.max_batch_size
    groups: list[list[int]] = []
    for start in range(0, len(lengths), window):
        claim = lengths[start : start + window]
        groups += [[start + i for i in group]
                   for group in token_bounded(claim, max_tokens=spec.max_batch_tokens, max_items=spec.max_batch_size)]
    return groups


def timed(mode: str, model: str, jobs: int, run: Callable[[], object], **extra: Any) -> Row:
    started = time.perf_counter()
    run()
    return Row(mode, model, jobs, jobs / (time.perf_counter() - started), extra=dict(extra))


def variant(spec: ModelSpec, backend: str) -> ModelSpec:
    """The model on `backend` (a name in VARIANTS), under its own name (one queue each, all served by one worker)."""
    return spec.model_copy(update={"name": f"{spec.name}-{backend}", **VARIANTS[backend]})


def in_process_modes(args: argparse.Namespace, spec: ModelSpec, texts: list[str],
                     outputs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """The modes that run in this process, warmed up; `outputs` gets each backend's last outputs."""
    from producer.contract import INPUT_OF_TASK
    from worker.runners import create_runner
    from worker.runners.base import resolve_source

    labels = ZERO_SHOT_LABELS if spec.kind == "zero_shot" else None
    inputs: list[Any] = [INPUT_OF_TASK[spec.task](text=t, labels=labels) for t in texts]
    runners, info = {}, {"load_s": {}}
    for backend in args.backends:
        started = time.perf_counter()
        runners[backend] = create_runner(variant(spec, backend))
        runners[backend].setup()
        info["load_s"][backend] = round(time.perf_counter() - started, 2)
    first = next(iter(runners.values()))
    vanilla = Vanilla(resolve_source(spec.source), first.max_tokens)  # type: ignore[attr-defined]
    encoded = vanilla.tokenizer(texts, truncation=True, max_length=first.max_tokens)
    info["token_lengths"] = [len(ids) for ids in encoded["input_ids"]]
    groups = textq_groups([first.estimate_tokens(x) for x in inputs], spec)

    def run_textq(backend: str) -> None:
        results: dict[int, dict[str, Any]] = {}
        for group in groups:
            results.update(zip(group, runners[backend].predict([inputs[i] for i in group]), strict=True))
        outputs[backend] = [results[i] for i in range(len(inputs))]

    # Warm-up: first calls allocate buffers and pick kernels.
    vanilla.embed(texts[: args.batch_size], args.batch_size, sort=False)
    for runner in runners.values():
        runner.predict([inputs[i] for i in groups[0]])
    return {
        "vanilla-arrival": lambda: vanilla.embed(texts, args.batch_size, sort=False),
        "vanilla-sorted": lambda: vanilla.embed(texts, args.batch_size, sort=True),
        **{f"raw-{b}": partial(run_textq, b) for b in runners},
    }, info


def queue_modes(args: argparse.Namespace, stack: ExitStack, env: Any, spec: ModelSpec,
                texts: list[str]) -> dict[str, Callable[[], Row]]:
    """The modes through Redis, the database and worker processes (started here, stopped by `stack`)."""
    from bench.measure import Harness, requests_for
    from bench.workers import naive_worker
    from producer.worker_process import WorkerProcess

    harness = Harness(env.database_url, env.broker_url, timeout_s=args.timeout)
    stack.callback(harness.close)
    variants = [variant(spec, b) for b in args.backends]
    worker = stack.enter_context(WorkerProcess(env=env.env, models=[v.name for v in variants],
                                               log_path=env.root / "worker.log", name="bench-backends"))
    naive_spec = variant(spec, "torch")  # plain PyTorch: what a hand-wired task runs
    naive: WorkerProcess = stack.enter_context(naive_worker(env.env, naive_spec.name, pool="threads", concurrency=4,
                                                            log_path=env.root / "worker-naive.log"))
    modes: dict[str, Callable[[], Row]] = {}
    for backend, v in zip(args.backends, variants, strict=True):
        requests = requests_for(v, texts)
        harness.warm_up(requests[: v.max_batch_size])
        modes[f"bulk-{backend}"] = partial(harness.bulk, f"bulk-{backend}", requests, worker.pid)
        modes[f"per-request-{backend}"] = partial(harness.per_request, f"per-request-{backend}", requests, worker.pid,
                                                  args.producers)
    harness.warm_up(requests_for(naive_spec, texts[:8]), naive=naive_spec)
    modes["naive"] = partial(harness.naive, "naive", naive_spec, texts[: args.naive_n], naive.pid, args.producers)
    return modes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import json

    import torch

    from producer.registry import load_registry
    from worker.settings import WorkerSettings

    models_file = os.environ.get("TEXTQ_MODELS_FILE")
    spec = load_registry(Path(models_file) if models_file else None).get(args.model)
    if spec.runner not in ENCODER_RUNNERS:
        sys.exit(f"--model {args.model}: runner {spec.runner!r} is not one of {ENCODER_RUNNERS}")
    threads = WorkerSettings().torch_threads
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    texts = mixed_length_texts(args.n, args.seed)
    outputs: dict[str, list[dict[str, Any]]] = {}
    with ExitStack() as stack:
        env = None
        if args.queue:
            from bench.environment import NULL_SPEC, BenchEnvironment

            env = stack.enter_context(BenchEnvironment(args.database))
            # The naive task runs plain PyTorch (`sentiment-torch`) whichever backends are measured.
            served = dict.fromkeys([*args.backends, "torch"])
            env.models_file.write_text(json.dumps([NULL_SPEC, *(variant(spec, b).model_dump(mode="json")
                                                                 for b in served)]))
        modes: dict[str, Callable[[], object]]
        modes, info = in_process_modes(args, spec, texts, outputs)
        queued = queue_modes(args, stack, env, spec, texts) if env is not None else {}
        runs: dict[str, list[Row]] = {m: [] for m in _interleaved([*modes, *queued], args.backends)}
        for repeat in range(args.repeat):
            for mode in runs:
                if mode in modes:
                    row = timed(mode, spec.name, len(texts), modes[mode], load=round(os.getloadavg()[0], 2))
                else:
                    row = queued[mode]()
                    backend = mode.removeprefix("bulk-").removeprefix("per-request-")
                    if f"raw-{backend}" in runs:  # paired with the raw run just before it
                        row.x_raw = row.jobs_per_s / runs[f"raw-{backend}"][-1].jobs_per_s
                runs[mode].append(row)
                _progress(repeat, args.repeat, row)
    rows = {m: combine(r) for m, r in runs.items()}
    _annotate(rows, args, spec, outputs, info["load_s"])
    token_lengths = info["token_lengths"]
    print(f"\n{spec.name} on {len(texts)} mixed-length texts (tokens p50 {statistics.median(token_lengths):.0f}, "
          f"max {max(token_lengths)}), {threads} threads, queue database {args.database}")
    print(render(rows))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output: Path = args.output or RESULTS / f"{stamp}-backends-{spec.name}.json"
    meta = {
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "threads": threads, "loadavg_end": os.getloadavg(),
                    "python": platform.python_version()},
        "corpus": {"texts": len(texts), "seed": args.seed, "tokens_p50": statistics.median(token_lengths),
                   "tokens_p90": sorted(token_lengths)[int(0.9 * (len(texts) - 1))], "tokens_max": max(token_lengths)},
        "spec": spec.model_dump(),
    }
    write_json(output, meta, rows, [])
    print(f"\nwrote {output}")
    return 0


def _interleaved(modes: list[str], backends: list[str]) -> list[str]:
    """Each backend's raw run just before its runs through the queue: on a shared machine the
    model's speed drifts within minutes, so each "x raw" compares runs made side by side."""
    by_backend = [m for b in backends for m in (f"raw-{b}", f"bulk-{b}", f"per-request-{b}") if m in modes]
    return [m for m in modes if m.startswith("vanilla-")] + by_backend + [m for m in modes if m == "naive"]


def _progress(repeat: int, repeats: int, row: Row) -> None:
    print(f"run {repeat + 1}/{repeats} {row.mode:<22} {row.jobs_per_s:8.1f} texts/s", flush=True)


def _annotate(rows: dict[str, Row], args: argparse.Namespace, spec: ModelSpec,
              outputs: dict[str, list[dict[str, Any]]], load_s: dict[str, float]) -> None:
    """Ratios to the reference and to naive; label agreement with torch ("x raw" is set per run)."""
    reference = rows["vanilla-arrival"].jobs_per_s
    for row in rows.values():
        row.extra["x_vanilla"] = round(row.jobs_per_s / reference, 3)
    for backend in args.backends:
        raw = rows[f"raw-{backend}"]
        raw.extra["load_s"] = load_s[backend]
        if "torch" in outputs and spec.task == "classify":
            same = sum(a["label"] == b["label"] for a, b in zip(outputs[backend], outputs["torch"], strict=True))
            raw.extra["label_agreement_with_torch"] = round(same / len(outputs["torch"]), 4)
    if "naive" in rows:
        for backend in args.backends:
            if f"per-request-{backend}" in rows:
                rows[f"per-request-{backend}"].extra["x_naive"] = round(
                    rows[f"per-request-{backend}"].jobs_per_s / rows["naive"].jobs_per_s, 2)


def render(rows: dict[str, Row]) -> str:
    lines = [f"{'mode':<24}{'texts/s':>9}{'x vanilla':>11}{'x raw':>8}{'x naive':>9}  agreement  runs"]
    for mode, row in rows.items():
        agreement = row.extra.get("label_agreement_with_torch")
        x_raw = "" if row.x_raw is None else f"{row.x_raw:.2f}x"
        x_naive = "" if "x_naive" not in row.extra else f"{row.extra['x_naive']:.1f}x"
        lines.append(f"{mode:<24}{row.jobs_per_s:>9.1f}{row.extra['x_vanilla']:>10.2f}x{x_raw:>8}{x_naive:>9}  "
                     f"{'' if agreement is None else f'{agreement:.2%}':>9}  {row.runs_jobs_per_s}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
