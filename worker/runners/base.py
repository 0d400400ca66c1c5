"""The runner contract (docs/models.md): heavy `setup()`, then `predict(batch)` with one output per input."""

from __future__ import annotations

import importlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import torch

from producer.contract import AnswerInput, JobInput
from producer.registry import ModelSpec
from worker.weights import local_weights_dir, weights_hash

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Rough characters per token for English, to bound a batch's tokens before tokenizing it.
CHARS_PER_TOKEN = 4


class Runner(ABC):
    """Base of every model runner. Construction is cheap; weights load in `setup`."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device = pick_device(spec.device)
        self.dtype = pick_dtype(spec.dtype, self.device)
        if DTYPES[spec.dtype] != self.dtype:
            log.info("model %r: dtype %s runs as %s on this %s", spec.name, spec.dtype,
                     str(self.dtype).removeprefix("torch."), self.device)

    @abstractmethod
    def setup(self) -> None:
        """Load weights onto `self.device`."""

    @abstractmethod
    def predict(self, batch: list[Any]) -> Sequence[dict[str, Any] | Exception]:
        """One JSON-serialisable output per input, in order; an exception in a job's place fails that job alone."""

    def estimate_tokens(self, job_input: JobInput) -> int:
        """Token estimate used to sort a batch by length and bound it by `max_batch_tokens`."""
        return input_chars(job_input) // CHARS_PER_TOKEN + 2

    @cached_property
    def version(self) -> str | None:
        """The `model_version` a job computed here records: a content hash of the weight files."""
        if self.spec.source is None:
            return None
        directory = local_weights_dir(resolve_source(self.spec.source))
        return None if directory is None else weights_hash(directory)

    def for_version(self, pinned: str | None) -> Runner:
        """The runner that computes a job pinned to `pinned` (None: not pinned); batcher thread."""
        if pinned is not None and pinned != self.version:
            raise VersionNotServedError(f"model {self.spec.name!r} has no versions: it cannot run a job pinned to {pinned!r}")
        return self

    def between_batches(self) -> None:
        """Upkeep in the batcher thread between batches, and every second while idle (a fine-tuned
        model switches versions here)."""
        return None


def input_chars(job_input: JobInput) -> int:
    """Characters a job's model reads (an answer's question and context together)."""
    if isinstance(job_input, AnswerInput):
        return len(job_input.question) + len(job_input.context)
    return len(job_input.text)


class VersionNotServedError(LookupError):
    """A job pinned to a model version that this runner cannot run (deleted, or never made)."""


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The precision a runner computes in: the spec's where the device runs it natively, else float32.

    A CPU runs bfloat16 natively with AVX512-BF16 or AMX (oneDNN's bf16 kernels: about 1.5x float32 for
    MiniLM, docs/backends.md); without them bfloat16 is emulated and slower than float32. float16 is
    for CUDA only.
    """
    if device.type == "cuda":
        return DTYPES[requested]
    if requested == "bfloat16" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware and `TEXTQ_CPU_BF16` does not turn it off."""
    from worker.settings import WorkerSettings

    return WorkerSettings().cpu_bf16 and _cpu_flags_have_bf16()


@cache
def _cpu_flags_have_bf16() -> bool:
    """The x86 flags avx512_bf16 or amx_bf16 in /proc/cpuinfo (Linux; elsewhere: False)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def pick_device(requested: str) -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_source(source: str | None) -> str:
    """A local path for `package:<module>` and `gguf:` sources; hub ids and directories pass through to `from_pretrained`."""
    if source is None:
        raise ValueError("this runner needs a model source (hub id, directory or package:<module>)")
    if source.startswith("gguf:"):
        from worker.runners.gguf_source import resolve_gguf

        return resolve_gguf(source)
    if source.startswith("package:"):
        module = importlib.import_module(source.removeprefix("package:"))
        getter = getattr(module, "get_model_path", None)
        return str(getter()) if getter else str(Path(module.__file__ or "").parent / "model")
    return source


def max_length(tokenizer: Any, spec: ModelSpec, model_config: Any) -> int:
    """Inputs are truncated to the smallest of the spec's limit and the model's own."""
    limits = [spec.max_input_tokens, getattr(model_config, "max_position_embeddings", None)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    return min(x for x in limits if x) if any(limits) else 512


def label_scores(probabilities: list[float], labels: list[str]) -> dict[str, Any]:
    """Pipeline-shaped classification output: top label and score, and every label's score."""
    ranked = sorted(zip(labels, probabilities, strict=True), key=lambda p: p[1], reverse=True)
    return {
        "label": ranked[0][0],
        "score": round(float(ranked[0][1]), 6),
        "scores": [{"label": label, "score": round(float(p), 6)} for label, p in ranked],
    }

