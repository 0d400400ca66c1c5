"""Model runners by name: a spec's `runner` is a built-in name or `module:Class` (docs/models.md)."""

from __future__ import annotations

import importlib

from producer.registry import ModelSpec
from producer.versions import FINE_TUNED_RUNNER
from worker.runners.base import Runner

BUILTIN_RUNNERS = {
    "prototype": "worker.runners.classifiers:PrototypeClassifier",
    "zero_shot": "worker.runners.classifiers:ZeroShotClassifier",
    "extractive": "worker.runners.extractive:ExtractiveSummarizer",
    "hf_classifier": "worker.runners.huggingface:SequenceClassifier",
    "hf_seq2seq": "worker.runners.huggingface:Seq2SeqSummarizer",
    "null": "worker.runners.null:NullRunner",
    FINE_TUNED_RUNNER: "worker.versions:FineTunedRunner",
    "hf_causal_lm": "worker.runners.causal_lm:CausalLM",
    "hf_extractive_qa": "worker.runners.question_answering:ExtractiveQA",
    "embedding": "worker.runners.embeddings:EmbeddingRunner",
}


def create_runner(spec: ModelSpec) -> Runner:
    """The (not yet set up) runner for `spec`, imported only now so a worker loads just what it serves."""
    target = BUILTIN_RUNNERS.get(spec.runner, spec.runner)
    module_name, sep, class_name = target.partition(":")
    if not sep:
        raise ValueError(f"unknown runner {spec.runner!r}: use one of {sorted(BUILTIN_RUNNERS)} or 'module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise TypeError(f"runner {target!r} is not a subclass of worker.runners.base.Runner")
    return cls(spec)


__all__ = ["BUILTIN_RUNNERS", "Runner", "create_runner"]
