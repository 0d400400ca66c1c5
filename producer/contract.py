"""The request/response contract, shared by the producer (validates at submit) and the worker
(validates again what it reads, since messages and rows can bypass the producer).

Requests are pydantic v2 models. Limits are passed in, never read here: `parse_request` and
`parse_job_input` take a `Limits` (the caller's settings), given to the validators as pydantic's
validation context; a model built directly (`ClassifyInput(text=...)`) gets `DEFAULT_LIMITS`.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
)

from producer.errors import FieldError, InvalidJobError
from producer.languages import language_code
from producer.limits import DEFAULT_LIMITS, Limits
from producer.registry import DEFAULT_MODEL_FOR, GENERATION_LIMITS, ModelSpec, Registry

# C0 and C1 controls and DEL; tab, newline and carriage return are text.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Format characters (zero-width space, joiners, BOM, ...) and separators draw nothing on their own.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Letters and marks that render blank (Hangul fillers, braille blank, variation selectors, ...).
_INVISIBLE_CHARS = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)
# Seconds: a deadline further away than a week is no deadline; omit `timeout` instead.
MAX_TIMEOUT_S = 7 * 24 * 3600


def _visible(char: str) -> bool:
    return char not in _INVISIBLE_CHARS and unicodedata.category(char) not in _INVISIBLE_CATEGORIES


def _content_problem(text: str) -> str | None:
    """Why `text` is not acceptable content (text or label), or None."""
    if not text.strip():
        return "must not be empty or only whitespace"
    if not any(map(_visible, text)):  # stops at the first visible character
        invisible = next(c for c in text if not c.isspace())
        return f"has no visible character (only whitespace and invisible characters such as U+{ord(invisible):04X})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate; send valid UTF-8 text"
    bad = _CONTROL_CHARS.search(text)
    if bad:
        return f"contains control character U+{ord(bad.group()):04X}; only tab, newline and carriage return are allowed"
    return None


def _limits(info: ValidationInfo) -> Limits:
    return info.context if isinstance(info.context, Limits) else DEFAULT_LIMITS


def _check_text(text: str, info: ValidationInfo) -> str:
    limit = _limits(info).max_text_chars
    if len(text) > limit:
        raise ValueError(f"is {len(text):,} characters; the limit is {limit:,} (TEXTQ_MAX_TEXT_CHARS)")
    problem = _content_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def _label_key(label: str) -> str:
    # Labels that differ only by case, outer whitespace or invisible characters look the same.
    return "".join(c for c in label if unicodedata.category(c) != "Cf").strip().casefold()


def _check_labels(labels: list[str], info: ValidationInfo) -> list[str]:
    limits = _limits(info)
    if not labels:
        raise ValueError("must list at least one label")
    if len(labels) > limits.max_labels:
        raise ValueError(f"has {len(labels)} labels; the limit is {limits.max_labels} (TEXTQ_MAX_LABELS)")
    seen: set[str] = set()
    for label in labels:
        if len(label) > limits.max_label_chars:
            raise ValueError(f"label {label[:20]!r}... is longer than {limits.max_label_chars} characters")
        problem = _content_problem(label)
        if problem:
            raise ValueError(f"label {label[:20]!r} {problem}")
        key = _label_key(label)
        if key in seen:
            raise ValueError(f"label {label!r} is duplicated; labels must be unique")
        seen.add(key)
    return labels


def _check_max_sentences(value: int, info: ValidationInfo) -> int:
    limit = _limits(info).max_summary_sentences
    if value > limit:
        raise ValueError(f"must be at most {limit} (TEXTQ_MAX_SUMMARY_SENTENCES)")
    return value


Text = Annotated[str, Strict(), AfterValidator(_check_text)]
Labels = Annotated[list[Annotated[str, Strict()]], AfterValidator(_check_labels)]
MaxSentences = Annotated[int, Strict(), Field(ge=1), AfterValidator(_check_max_sentences)]
# A JSON number of seconds: no strings, no booleans, nothing infinite.
Timeout = Annotated[float, Strict(), AllowInfNan(False), Field(gt=0, le=MAX_TIMEOUT_S)]


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


MAX_IDEMPOTENCY_KEY_CHARS = 255  # the jobs.idempotency_key column
# A batch keyed K stores its jobs under K + separator + index. Single keys cannot contain it (no
# control character is allowed in a key), so the two namespaces never meet.
BATCH_KEY_SEPARATOR = "\x1f"
_KEY_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_idempotency_key(key: str) -> str:
    bad = _KEY_CONTROL_CHARS.search(key)
    if bad:
        raise ValueError(f"contains control character U+{ord(bad.group()):04X}; a key is printable text")
    return key


IdempotencyKey = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS),
                           AfterValidator(_check_idempotency_key)]


def batch_job_keys(key: str, count: int) -> list[str]:
    """The keys of a batch of `count` jobs submitted with `key`, or InvalidJobError if it is not a key."""
    try:
        _idempotency_key_adapter.validate_python(key)
    except ValidationError as exc:
        raise InvalidJobError([FieldError("idempotency_key", e.message) for e in field_errors(exc)]) from None
    room = MAX_IDEMPOTENCY_KEY_CHARS - len(BATCH_KEY_SEPARATOR) - len(str(count - 1))
    if len(key) > room:
        raise InvalidJobError.single("idempotency_key", f"is {len(key)} characters; a batch of {count} jobs stores "
                                     f"each under the key and its index, so the key may have at most {room}")
    return [f"{key}{BATCH_KEY_SEPARATOR}{index}" for index in range(count)]


class JobOptions(BaseModel):
    """How a job is submitted: which model, how urgent, deduplication, deadline."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="registry name; default depends on the task")
    priority: Annotated[int, Strict()] = Field(5, ge=0, le=9, description="0 runs first, 9 last")
    idempotency_key: IdempotencyKey | None = None
    timeout: Timeout | None = Field(
        None, description=f"seconds from submit after which the job expires unrun (at most {MAX_TIMEOUT_S}: 7 days)"
    )
    webhook_url: str | None = Field(None, max_length=2048, description="https URL to POST the finished job to (signed)")


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
_idempotency_key_adapter: TypeAdapter[str] = TypeAdapter(IdempotencyKey)


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
    # The weights that computed it: `name@N` (fine-tuned models; set at submit when pinned) or a weights hash.
    model_version: str | None = None
    # Set once an operator retried the job: its error then, and the attempts it had used (not counted in `attempts`).
    previous_error: str | None = None
    retried_attempts: int = 0
    retried_at: datetime | None = None
    # A result cache hit: the job whose output this one reused, uncomputed (docs/backends.md#result-cache).
    cached_from: uuid.UUID | None = None

    model_config = ConfigDict(from_attributes=True)

    @computed_field  # type: ignore[prop-decorator]  # in model_dump and the HTTP schema
    @property
    def cache_hit(self) -> bool:
        return self.cached_from is not None

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


def parse_request(data: Any, limits: Limits) -> AnyJobRequest:
    """A request from untyped data (JSON, CLI) within `limits`, or InvalidJobError naming each bad field."""
    try:
        return job_request_adapter.validate_python(data, context=limits)
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


def parse_job_input(spec: ModelSpec, raw: Any, limits: Limits) -> JobInput:
    """Validate a stored job input for `spec` within `limits` (worker side), or raise InvalidJobError."""
    try:
        job_input = INPUT_OF_TASK[spec.task].model_validate(raw, context=limits)
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
