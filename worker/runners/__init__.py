"""Model runners by name. A spec's `runner` is one of these names, or `module:Class` for your own
subclass of `worker.runners.base.Runner`."""

from __future__ import annotations

import importlib

from producer.registry import ModelSpec
from worker.runners.base import Runner

BUILTIN_RUNNERS = {
    "prototype": "worker.runners.classifiers:PrototypeClassifier",
    "zero_shot": "worker.runners.classifiers:ZeroShotClassifier",
    "extractive": "worker.runners.extractive:ExtractiveSummarizer",
    "hf_classifier": "worker.runners.huggingface:SequenceClassifier",
    "hf_seq2seq": "worker.runners.huggingface:Seq2SeqSummarizer",
    "null": "worker.runners.null:NullRunner",
}


def create_runner(spec: ModelSpec) -> Runner:
    """The (not yet set up) runner for `spec`. Imports it only now, so the worker loads just the
    code of the models it serves."""
    target = BUILTIN_RUNNERS.get(spec.runner, spec.runner)
    module_name, sep, class_name = target.partition(":")
    if not sep:
        raise ValueError(f"unknown runner {spec.runner!r}: use one of {sorted(BUILTIN_RUNNERS)} or 'module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Runner)):
        raise TypeError(f"runner {target!r} is not a subclass of worker.runners.base.Runner")
    return cls(spec)


__all__ = ["BUILTIN_RUNNERS", "Runner", "create_runner"]
