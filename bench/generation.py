"""Generation throughput: textq (bulk, and one job per request) against the raw batched `generate`.

    python -m bench.generation [--n 32] [--max-new-tokens 48] [--database sqlite|postgresql]

Same prompts, same model (the default `abstractive`, SmolLM2-135M-Instruct), the same greedy
settings and token-bounded groups; then the light-load latency of one summary. Prints a table of
generated tokens/s, jobs/s and the ratio to raw. Raw runs before and after the textq modes (the
model stays loaded in this process), and the ratios are to the mean of the two: on a shared machine
one raw run alone can be far off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.environment import BenchEnvironment
from bench.texts import documents
from bench.workers import textq_worker

MODEL = "abstractive"


@dataclass(frozen=True)
class Result:
    mode: str
    jobs: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def _spec(max_new_tokens: int) -> dict[str, Any]:
    from producer.registry import default_registry

    spec = default_registry().get(MODEL)
    # Fixed-length summaries (max_new_tokens), so every mode generates comparable work.
    return spec.model_copy(update={"options": {**spec.options, "max_new_tokens": max_new_tokens}}).model_dump()


def raw_generate(spec: dict[str, Any], texts: Sequence[str]) -> Callable[[], Result]:
    """The model alone, in this process: the same prompts through one batched `generate` per group.
    Loads the model and warms it up; each call of the returned function is one timed run."""
    import torch

    from producer.contract import SummarizeInput
    from producer.registry import ModelSpec
    from worker.runners.causal_lm import CausalLM
    from worker.runners.generation import Generated, Prompt
    from worker.runners.prompts import summary_messages
    from worker.settings import WorkerSettings

    torch.set_num_threads(WorkerSettings().torch_threads)  # as many threads as the worker's batcher gets
    runner = CausalLM(ModelSpec.model_validate(spec))
    runner.setup()
    inputs = [SummarizeInput(text=t, style="abstractive") for t in texts]
    prompts = [Prompt(ids=runner._prompt_ids(summary_messages(x.text, max_words=None, max_sentences=x.max_sentences)),
                      max_new_tokens=runner.max_new_tokens(x), deadline=float("inf")) for x in inputs]
    runner.generator.run([Prompt(ids=prompts[0].ids, max_new_tokens=2, deadline=float("inf"))])  # warm-up, untimed

    def run() -> Result:
        started = time.perf_counter()
        results = runner.generator.run(prompts)
        seconds = time.perf_counter() - started
        tokens = sum(r.generated_tokens for r in results if isinstance(r, Generated))
        return Result("raw generate (batched)", len(texts), tokens, seconds)

    return run


def _through_textq(mode: str, client: Any, texts: Sequence[str], submit: Callable[[Any, list[dict[str, Any]]], list[Any]],
                   timeout: float) -> Result:
    requests = [{"task": "summarize", "style": "abstractive", "model": MODEL, "text": t} for t in texts]
    started = time.perf_counter()
    ids = [v.id for v in submit(client, requests)]
    views = client.wait_many(ids, timeout=timeout)
    seconds = time.perf_counter() - started
    failed = [v for v in views if v.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} {mode} jobs did not succeed: {failed[0].error_message}")
    return Result(mode, len(texts), sum(v.output["generated_tokens"] for v in views), seconds)


def _textq_rows(env: BenchEnvironment, texts: Sequence[str], timeout: float) -> list[Result]:
    from producer.client import Client

    with Client(database_url=env.database_url, broker_url=env.broker_url) as client:
        client.wait(client.summarize(texts[0], style="abstractive", model=MODEL).id, timeout=timeout)  # warm-up
        return [
            _through_textq("textq bulk (submit_many)", client, texts, lambda c, r: c.submit_many(r), timeout),
            _through_textq("textq one job per request", client, texts, lambda c, r: [c.submit(x) for x in r], timeout),
        ]


def _latencies(env: BenchEnvironment, texts: Sequence[str], timeout: float) -> list[float]:
    """Seconds from submit to result of one summary at a time (an idle worker)."""
    from producer.client import Client

    latencies = []
    with Client(database_url=env.database_url, broker_url=env.broker_url) as client:
        for text in texts:
            started = time.perf_counter()
            client.wait(client.summarize(text, style="abstractive", model=MODEL).id, timeout=timeout)
            latencies.append(time.perf_counter() - started)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="summaries per mode")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    texts = documents(args.n, sentences=(4, 8))

    with BenchEnvironment(args.database) as env:
        spec = _spec(args.max_new_tokens)
        env.models_file.write_text(json.dumps([spec]))
        raw_run = raw_generate(spec, texts)
        raw_before = raw_run()
        worker = textq_worker(env.env, MODEL, log_path=env.root / "worker.log")
        worker.start(timeout=600)  # a first run converts the GGUF file
        try:
            rows = _textq_rows(env, texts, args.timeout)
            latencies = _latencies(env, texts[: args.latency_runs], args.timeout)
        finally:
            worker.stop()
        raw_after = raw_run()

    raw_tokens_per_s = (raw_before.tokens_per_s + raw_after.tokens_per_s) / 2
    print(f"\n{args.n} summaries, max_new_tokens={args.max_new_tokens}, {args.database}; raw runs before and "
          f"after the textq modes, ratios to their mean\n")
    print("| mode | jobs | generated tokens | s | tokens/s | jobs/s | vs raw |\n|---|---|---|---|---|---|---|")
    for row, label in [(raw_before, " (before)"), (raw_after, " (after)"), *((r, "") for r in rows)]:
        print(f"| {row.mode}{label} | {row.jobs} | {row.generated_tokens} | {row.seconds:.1f} | {row.tokens_per_s:.1f} | "
              f"{row.jobs_per_s:.2f} | {row.tokens_per_s / raw_tokens_per_s:.2f}x |")
    print(f"\nlight load, one summary: median {statistics.median(latencies):.2f} s over {len(latencies)} runs "
          f"(min {min(latencies):.2f}, max {max(latencies):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
