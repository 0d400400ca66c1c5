"""The request/response contract, shared by the producer (validates at submit) and the worker
(validates again what it reads, since messages and rows can bypass the producer).

Requests are pydantic v2 models; limits come from `ProducerSettings` (env `TEXTQ_*`).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from producer.errors import FieldError, InvalidJobError
from producer.languages import language_code
from producer.registry import DEFAULT_MODEL_FOR, GENERATION_LIMITS, ModelSpec, Registry
from producer.settings import producer_settings

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_text(text: str) -> str:
    limit = producer_settings().max_text_chars
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    if len(text) > limit:
        raise ValueError(f"is {len(text):,} characters; the limit is {limit:,} (TEXTQ_MAX_TEXT_CHARS)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate; send valid UTF-8 text") from None
    bad = _CONTROL_CHARS.search(text)
    if bad:
        raise ValueError(
            f"contains control character U+{ord(bad.group()):04X}; only tab, newline and carriage return are allowed"
        )
    return text


def _check_labels(labels: list[str]) -> list[str]:
    settings = producer_settings()
    if not labels:
        raise ValueError("must list at least one label")
    if len(labels) > settings.max_labels:
        raise ValueError(f"has {len(labels)} labels; the limit is {settings.max_labels} (TEXTQ_MAX_LABELS)")
    seen: set[str] = set()
    for label in labels:
        if not label.strip():
            raise ValueError("labels must not be empty or only whitespace")
        if len(label) > settings.max_label_chars:
            raise ValueError(f"label {label[:20]!r}... is longer than {settings.max_label_chars} characters")
        _check_text(label)
        key = label.strip().casefold()
        if key in seen:
            raise ValueError(f"label {label!r} is duplicated; labels must be unique")
        seen.add(key)
    return labels


def _check_max_sentences(value: int) -> int:
    limit = producer_settings().max_summary_sentences
    if value > limit:
        raise ValueError(f"must be at most {limit} (TEXTQ_MAX_SUMMARY_SENTENCES)")
    return value


Text = Annotated[str, Strict(), AfterValidator(_check_text)]
Labels = Annotated[list[Annotated[str, Strict()]], AfterValidator(_check_labels)]
MaxSentences = Annotated[int, Strict(), Field(ge=1), AfterValidator(_check_max_sentences)]


# Omitted (None) means no: a text longer than the model's window is split into chunks, not cut.
Truncate = Annotated[bool | None, Strict(), Field(description="true: cut a text longer than the model's window "
                                                               "to its first window instead of chunking it")]
MaxWords = Annotated[int, Strict(), Field(ge=1, le=1000)]
Language = Annotated[str, Strict(), AfterValidator(language_code)]


class ClassifyInput(BaseModel):
    """What a classification job computes on: the text, and labels for zero-shot models."""

    model_config = ConfigDict(extra="forbid")

    text: Text
    labels: Labels | None = None
    truncate: Truncate = None


class SummarizeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text
    max_sentences: MaxSentences = 3
    style: Literal["extractive", "abstractive"] | None = Field(None, description="default: the model's kind")
    max_words: MaxWords | None = Field(None, description="abstractive summaries: length in words (else max_sentences)")
    truncate: Truncate = None


class GenerationInput(BaseModel):
    """Settings of a generated output; a model's spec may lower the ceilings (`registry.GENERATION_LIMITS`)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: Annotated[int, Strict()] | None = Field(None, ge=1, le=4096, description="default: the model's")
    temperature: float | None = Field(None, ge=0, le=2, description="0 or omitted: greedy (deterministic)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling, with a temperature above 0")
    truncate: Truncate = None


class TranslateInput(GenerationInput):
    text: Text
    target_language: Language = Field(description="ISO 639-1 code or English name, e.g. 'fr' or 'French'")
    source_language: Language | None = Field(None, description="default: the model tells")

    @field_validator("source_language")
    @classmethod
    def _differs_from_target(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("target_language"):
            raise ValueError("must differ from target_language")
        return value


class AnswerInput(GenerationInput):
    """A question answered from `context` only (generated by a causal LM, or a span of it by a QA model)."""

    question: Text
    context: Text


class EmbedInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text
    truncate: Truncate = None


JobInput = ClassifyInput | SummarizeInput | TranslateInput | AnswerInput | EmbedInput
INPUT_OF_TASK: dict[str, type[JobInput]] = {
    "classify": ClassifyInput,
    "summarize": SummarizeInput,
    "translate": TranslateInput,
    "answer": AnswerInput,
    "embed": EmbedInput,
}


class JobOptions(BaseModel):
    """How a job is submitted: which model, how urgent, deduplication, deadline."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="registry name; default depends on the task")
    priority: Annotated[int, Strict()] = Field(5, ge=0, le=9, description="0 runs first, 9 last")
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    timeout: float | None = Field(None, gt=0, description="seconds from submit after which the job expires unrun")


class ClassifyRequest(JobOptions, ClassifyInput):
    task: Literal["classify"] = "classify"


class SummarizeRequest(JobOptions, SummarizeInput):
    task: Literal["summarize"] = "summarize"


class TranslateRequest(JobOptions, TranslateInput):
    task: Literal["translate"] = "translate"


class AnswerRequest(JobOptions, AnswerInput):
    task: Literal["answer"] = "answer"


class EmbedRequest(JobOptions, EmbedInput):
    task: Literal["embed"] = "embed"


AnyJobRequest = ClassifyRequest | SummarizeRequest | TranslateRequest | AnswerRequest | EmbedRequest


def _task_of(data: Any) -> Any:
    # "task" may be omitted: a request without one is a classification.
    return data.get("task", "classify") if isinstance(data, dict) else getattr(data, "task", None)


JobRequest = Annotated[
    Annotated[ClassifyRequest, Tag("classify")] | Annotated[SummarizeRequest, Tag("summarize")]
    | Annotated[TranslateRequest, Tag("translate")] | Annotated[AnswerRequest, Tag("answer")]
    | Annotated[EmbedRequest, Tag("embed")],
    Discriminator(_task_of, custom_error_type="invalid_task",
                  custom_error_message="task must be one of 'classify', 'summarize', 'translate', 'answer', 'embed'"),
]
job_request_adapter: TypeAdapter[AnyJobRequest] = TypeAdapter(JobRequest)


class JobView(BaseModel):
    """A job as a caller sees it, read from the jobs table."""

    id: uuid.UUID
    status: str
    model: str
    task: str
    input: Any = None
    output: Any = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    priority: int = 5
    worker: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None

    model_config = ConfigDict(from_attributes=True)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled", "expired")

    @property
    def queue_seconds(self) -> float | None:
        return (self.started_at - self.created_at).total_seconds() if self.started_at else None

    @property
    def run_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if p not in INPUT_OF_TASK) or "request"
        message = err["msg"].removeprefix("Value error, ")
        errors.append(FieldError(prefix + field, message))
    return errors


def parse_request(data: Any) -> AnyJobRequest:
    """A request from untyped data (JSON, CLI), or InvalidJobError naming each bad field."""
    try:
        return job_request_adapter.validate_python(data)
    except ValidationError as exc:
        raise InvalidJobError(field_errors(exc)) from None


def resolve_model(request: AnyJobRequest, registry: Registry) -> ModelSpec:
    """The model a request runs on, checked against the request's task and labels."""
    if request.model is None:
        labels = getattr(request, "labels", None)
        default_kind: str = "zero_shot" if labels is not None else request.task
        if getattr(request, "style", None) == "abstractive":
            default_kind = "abstractive"
        spec = registry.get(DEFAULT_MODEL_FOR[default_kind])
    else:
        spec = registry.get(request.model)
    check_input_fits_model(spec, request)
    return spec


def check_input_fits_model(spec: ModelSpec, job_input: JobInput) -> None:
    task = next(name for name, cls in INPUT_OF_TASK.items() if isinstance(job_input, cls))
    if spec.task != task:
        raise InvalidJobError.single("model", f"model {spec.name!r} serves {spec.task} jobs, not {task}")
    if isinstance(job_input, SummarizeInput):
        _check_summary_fits_model(spec, job_input)
    if isinstance(job_input, GenerationInput):
        _check_generation_limits(spec, job_input)
    if isinstance(job_input, ClassifyInput):
        if spec.kind == "zero_shot" and job_input.labels is None:
            raise InvalidJobError.single("labels", f"model {spec.name!r} is zero-shot: give the candidate labels")
        if spec.kind == "classify" and job_input.labels is not None:
            raise InvalidJobError.single(
                "labels", f"model {spec.name!r} has fixed labels; omit labels or use a zero-shot model"
            )


def job_input_of(request: AnyJobRequest) -> dict[str, Any]:
    """The part of a request stored as the job's input (what the worker computes on)."""
    fields = INPUT_OF_TASK[request.task].model_fields
    return request.model_dump(include=set(fields), exclude_none=True)


def parse_job_input(spec: ModelSpec, raw: Any) -> JobInput:
    """Validate a stored job input for `spec` (worker side), or raise InvalidJobError."""
    try:
        job_input = INPUT_OF_TASK[spec.task].model_validate(raw)
    except ValidationError as exc:
        raise InvalidJobError(field_errors(exc, prefix="input.")) from None
    check_input_fits_model(spec, job_input)
    return job_input


def _check_summary_fits_model(spec: ModelSpec, job_input: SummarizeInput) -> None:
    abstractive = spec.kind == "abstractive"
    if job_input.style is not None and (job_input.style == "abstractive") != abstractive:
        raise InvalidJobError.single(
            "style", f"model {spec.name!r} writes {'abstractive' if abstractive else 'extractive'} summaries, "
                     f"not {job_input.style}; omit model to get the default {job_input.style} model"
        )
    if job_input.max_words is not None and not abstractive:
        raise InvalidJobError.single(
            "max_words", f"model {spec.name!r} is extractive (it picks whole sentences): "
                         "use max_sentences, or style='abstractive'"
        )


def _check_generation_limits(spec: ModelSpec, job_input: GenerationInput) -> None:
    """Per-model ceilings (spec options), tighter than the request fields' own."""
    for field, option in (("max_new_tokens", "max_new_tokens_limit"), ("temperature", "max_temperature")):
        value, limit = getattr(job_input, field), spec.options.get(option, GENERATION_LIMITS[option])
        if value is not None and value > limit:
            raise InvalidJobError.single(field, f"must be at most {limit} for model {spec.name!r} (its options.{option})")
