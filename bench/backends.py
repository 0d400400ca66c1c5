"""`python -m bench.backends`: the model's forward pass on a mixed-length corpus, per backend, in one run."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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
BACKENDS = ("torch", "onnx", "onnx-int8")
ENCODER_RUNNERS = ("prototype", "zero_shot")
ZERO_SHOT_LABELS = ["business", "sports", "politics", "science", "technology"]
DESCRIPTION = """\
The model alone (no queue, no database) on the mixed-length corpus (bench/corpus.py), in this process.

modes:
  vanilla-arrival   plain transformers: tokenize, forward, mean-pool in batches of --batch-size in
                    arrival order (what a user writes by hand: the reference, 1.00x)
  vanilla-sorted    the same with the texts sorted by length first
  textq-BACKEND     the runner's predict() on each backend, batched as a busy textq batcher does:
                    claims of WINDOW_BATCHES x max_batch_size in arrival order, each sorted by
                    length and cut by max_batch_tokens and max_batch_size

Each repeat runs every mode once, in turn, so machine load hits them alike; numbers are medians.
Label agreement with textq-torch is measured on the same corpus (classification models).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m bench.backends --n 2000 --repeat 3")
    parser.add_argument("--model", default="sentiment", help="registry model with an encoder runner (default: sentiment)")
    parser.add_argument("--n", type=int, default=2000, help="texts in the corpus (default: 2000)")
    parser.add_argument("--seed", type=int, default=11, help="corpus seed (default: 11)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode; medians are reported (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="vanilla batch size (default: 32)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated (default: {','.join(BACKENDS)})")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: bench/results/<time>-backends-<model>.json)")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from producer.contract import INPUT_OF_TASK
    from producer.registry import default_registry
    from worker.runners import create_runner
    from worker.runners.base import resolve_source
    from worker.settings import WorkerSettings

    spec = default_registry().get(args.model)
    if spec.runner not in ENCODER_RUNNERS:
        sys.exit(f"--model {args.model}: runner {spec.runner!r} is not one of {ENCODER_RUNNERS}")
    threads = WorkerSettings().torch_threads
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    texts = mixed_length_texts(args.n, args.seed)
    labels = ZERO_SHOT_LABELS if spec.kind == "zero_shot" else None
    inputs: list[Any] = [INPUT_OF_TASK[spec.task](text=t, labels=labels) for t in texts]

    runners, load_s = {}, {}
    for backend in args.backends:
        started = time.perf_counter()
        runners[backend] = create_runner(spec.model_copy(update={"backend": backend}))
        runners[backend].setup()
        load_s[backend] = round(time.perf_counter() - started, 2)
    first = next(iter(runners.values()))
    vanilla = Vanilla(resolve_source(spec.source), first.max_tokens)  # type: ignore[attr-defined]
    token_lengths = [len(ids) for ids in vanilla.tokenizer(texts, truncation=True, max_length=first.max_tokens)["input_ids"]]
    groups = textq_groups([first.estimate_tokens(x) for x in inputs], spec)

    outputs: dict[str, list[dict[str, Any]]] = {}

    def run_textq(backend: str) -> None:
        results: dict[int, dict[str, Any]] = {}
        for group in groups:
            results.update(zip(group, runners[backend].predict([inputs[i] for i in group]), strict=True))
        outputs[backend] = [results[i] for i in range(len(inputs))]

    modes: dict[str, Callable[[], object]] = {
        "vanilla-arrival": lambda: vanilla.embed(texts, args.batch_size, sort=False),
        "vanilla-sorted": lambda: vanilla.embed(texts, args.batch_size, sort=True),
        **{f"textq-{b}": partial(run_textq, b) for b in runners},
    }
    # Warm-up: first calls allocate buffers and pick kernels.
    vanilla.embed(texts[: args.batch_size], args.batch_size, sort=False)
    for runner in runners.values():
        runner.predict([inputs[i] for i in groups[0]])
    runs: dict[str, list[Row]] = {m: [] for m in modes}
    for repeat in range(args.repeat):
        for mode, run in modes.items():
            runs[mode].append(timed(mode, spec.name, len(texts), run, load=round(os.getloadavg()[0], 2)))
            print(f"run {repeat + 1}/{args.repeat} {mode:<16} {runs[mode][-1].jobs_per_s:8.1f} texts/s", flush=True)
    rows = {m: combine(r) for m, r in runs.items()}
    reference = rows["vanilla-arrival"].jobs_per_s
    for backend in runners:
        row = rows[f"textq-{backend}"]
        row.extra["load_s"] = load_s[backend]
        if "torch" in outputs and spec.task == "classify":
            same = sum(a["label"] == b["label"] for a, b in zip(outputs[backend], outputs["torch"], strict=True))
            row.extra["label_agreement_with_torch"] = round(same / len(texts), 4)

    print(f"\n{spec.name} on {len(texts)} mixed-length texts (tokens p50 {statistics.median(token_lengths):.0f}, "
          f"max {max(token_lengths)}), {threads} threads")
    print(f"{'mode':<18}{'texts/s':>10}{'x vanilla':>11}  agreement  runs")
    for mode, row in rows.items():
        agreement = row.extra.get("label_agreement_with_torch")
        print(f"{mode:<18}{row.jobs_per_s:>10.1f}{row.jobs_per_s / reference:>10.2f}x  "
              f"{'' if agreement is None else f'{agreement:.2%}':>9}  {row.runs_jobs_per_s}")
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


if __name__ == "__main__":
    sys.exit(main())
