"""`hf_causal_lm`: abstractive summaries, translations and grounded answers from a chat causal LM.

A batch's jobs become prompts (a long text becomes several: summaries map-reduce over chunks,
translations translate chunk by chunk, answers are sought in each chunk and the chunks' answers
combined), generated together in length-sorted, token-bounded groups
(worker/runners/generation.py). A job past its time limit fails alone with a clear error.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from producer.contract import AnswerInput, GenerationInput, JobInput, SummarizeInput, TranslateInput
from producer.languages import language_name
from producer.registry import ModelSpec
from worker.runners.base import CHARS_PER_TOKEN, Runner, input_chars, max_length, resolve_source
from worker.runners.chunking import Chunks, reduce_groups, split_by_tokens
from worker.runners.generation import Generated, GenerationTimeLimitError, Generator, Prompt
from worker.runners.prompts import (
    Messages,
    answer_messages,
    combine_answers_messages,
    is_no_answer,
    kept_answers,
    summary_messages,
    translation_messages,
)
from worker.runners.sentences import within_length

DEFAULTS: dict[str, float] = {"max_new_tokens": 128, "job_time_limit_s": 120.0, "chunk_overlap_tokens": 32}
# Rough tokens per English word, to turn a summary's max_words into max_new_tokens.
TOKENS_PER_WORD = 1.6
# Tokens kept free between a chunk and the window, for tokenization differences at chunk edges.
EDGE_MARGIN = 8


class InputTooLongError(ValueError):
    """A request whose max_new_tokens leaves no room for its text in the model's window."""


_shared_models: dict[tuple[str, str, str], Any] = {}
_shared_lock = threading.Lock()


def shared_model(path: str, dtype: torch.dtype, device: torch.device) -> Any:
    """One copy of the weights per process, shared by the specs that name the same source: inference
    only reads them (each runner keeps its own tokenizer, which is not thread-safe)."""
    key = (path, str(dtype), str(device))
    with _shared_lock:
        if key not in _shared_models:
            model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            _shared_models[key] = model.to(device).eval()
        return _shared_models[key]


@dataclass
class _Job:
    """A job in flight: its prompts of the current stage, and what its output collects."""

    input: JobInput
    deadline: float
    chunks: Chunks
    partials: list[Generated] = field(default_factory=list)
    # An answer's chunks whose own answer was kept (the others said no, or were not grounded in their chunk).
    answered_in: list[int] | None = None
    error: Exception | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0


class CausalLM(Runner):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.options = {**DEFAULTS, **spec.options}

    def setup(self) -> None:
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"model {self.spec.name!r} has no chat template: hf_causal_lm needs an instruct model")
        self.model: Any = shared_model(path, self.dtype, self.device)
        self.window = max_length(self.tokenizer, self.spec, self.model.config)
        self.generator = Generator(self.model, self.tokenizer, max_batch_size=self.spec.max_batch_size,
                                   max_batch_tokens=self.spec.max_batch_tokens)

    # -- sizing -----------------------------------------------------------------------------
    def max_new_tokens(self, job_input: JobInput) -> int:
        if isinstance(job_input, GenerationInput) and job_input.max_new_tokens is not None:
            return job_input.max_new_tokens
        if isinstance(job_input, SummarizeInput) and job_input.max_words is not None:
            return math.ceil(job_input.max_words * TOKENS_PER_WORD) + 8
        return int(self.options["max_new_tokens"])

    def estimate_tokens(self, job_input: JobInput) -> int:
        """Prompt (capped at the window: longer texts are chunked) plus the tokens it may generate."""
        window = getattr(self, "window", self.spec.max_input_tokens or 2048)
        return min(input_chars(job_input) // CHARS_PER_TOKEN + 64, window) + self.max_new_tokens(job_input)

    # -- predicting ------------------------------------------------------------------------
    def predict(self, batch: list[Any]) -> list[dict[str, Any] | Exception]:
        start = time.monotonic()
        jobs = [self._start(job_input, start) for job_input in batch]
        self._run_stage(jobs, [self._first_prompts(job) for job in jobs])
        for job in jobs:
            self._keep_answers(job)
        # Summaries of several chunks are summarized again, and the answers found in several chunks
        # combined, until one remains (map-reduce).
        while reducing := [j for j in jobs if j.error is None and isinstance(j.input, SummarizeInput | AnswerInput)
                           and len(j.partials) > 1]:
            self._run_stage(reducing, [self._reduce_prompts(job) for job in reducing])
        return [job.error if job.error is not None else self._output(job) for job in jobs]

    def _start(self, job_input: JobInput, start: float) -> _Job:
        job = _Job(job_input, deadline=start + float(self.options["job_time_limit_s"]), chunks=Chunks([]))
        try:
            job.chunks = self._chunks(job_input)
        except InputTooLongError as exc:
            job.error = exc
        return job

    def _chunks(self, job_input: JobInput) -> Chunks:
        if isinstance(job_input, AnswerInput):
            return self._answer_context(job_input)
        assert isinstance(job_input, SummarizeInput | TranslateInput), type(job_input)
        budget = self._text_budget(self._messages(job_input, ""), job_input)
        # Translations are joined end to end: overlapping chunks would translate a passage twice.
        overlap = 0 if isinstance(job_input, TranslateInput) else int(self.options["chunk_overlap_tokens"])
        return split_by_tokens(self.tokenizer, job_input.text, budget, overlap, truncate=bool(job_input.truncate))

    def _answer_context(self, job_input: AnswerInput) -> Chunks:
        """A long context in overlapping chunks, so that an answer cut by one chunk's edge is whole in the next."""
        budget = self._text_budget(answer_messages(job_input.question, ""), job_input)
        return split_by_tokens(self.tokenizer, job_input.context, budget, int(self.options["chunk_overlap_tokens"]),
                               truncate=bool(job_input.truncate))

    def _text_budget(self, empty_prompt: Messages, job_input: JobInput) -> int:
        budget = self.window - len(self._prompt_ids(empty_prompt)) - self.max_new_tokens(job_input) - EDGE_MARGIN
        if budget < 16:
            raise InputTooLongError(
                f"max_new_tokens={self.max_new_tokens(job_input)} leaves no room for the text in model "
                f"{self.spec.name!r}'s {self.window}-token window"
            )
        return budget

    def _messages(self, job_input: JobInput, text: str) -> Messages:
        if isinstance(job_input, SummarizeInput):
            return summary_messages(text, max_words=job_input.max_words, max_sentences=job_input.max_sentences)
        if isinstance(job_input, TranslateInput):
            source = language_name(job_input.source_language) if job_input.source_language else None
            return translation_messages(text, target=language_name(job_input.target_language), source=source)
        assert isinstance(job_input, AnswerInput), type(job_input)
        return answer_messages(job_input.question, text)

    def _first_prompts(self, job: _Job) -> list[Messages]:
        return [self._messages(job.input, text) for text in job.chunks.texts] if job.error is None else []

    def _keep_answers(self, job: _Job) -> None:
        """Of an answer's chunks, keep the answers read there (all say no: the first chunk's reply stands)."""
        if job.error is not None or not isinstance(job.input, AnswerInput) or len(job.partials) < 2:
            return
        kept = kept_answers([p.text for p in job.partials], job.chunks.texts)
        job.answered_in = kept
        job.partials = [job.partials[i] for i in kept] or job.partials[:1]

    def _reduce_prompts(self, job: _Job) -> list[Messages]:
        """Consecutive partial summaries (or a long context's answers) packed into as few prompts as the window allows."""
        job_input = job.input

        def prompt(texts: list[str]) -> Messages:
            if isinstance(job_input, AnswerInput):
                return combine_answers_messages(job_input.question, texts)
            assert isinstance(job_input, SummarizeInput)
            return summary_messages("\n\n".join(texts), max_words=job_input.max_words,
                                    max_sentences=job_input.max_sentences, partial=True)

        budget = self.window - self.max_new_tokens(job_input)
        groups = reduce_groups([p.text for p in job.partials], lambda g: len(self._prompt_ids(prompt(g))) <= budget)
        return [prompt(group) for group in groups]

    def _run_stage(self, jobs: list[_Job], messages: list[list[Messages]]) -> None:
        """Generate every job's prompts of this stage together; each job's `partials` become the results."""
        prompts: list[Prompt] = []
        owners: list[_Job] = []
        for job, job_messages in zip(jobs, messages, strict=True):
            for m in job_messages:
                ids = self._prompt_ids(m)
                sampling = job.input if isinstance(job.input, GenerationInput) else None
                prompts.append(Prompt(
                    ids=ids[-self.window :], max_new_tokens=self.max_new_tokens(job.input), deadline=job.deadline,
                    temperature=(sampling.temperature or 0.0) if sampling else 0.0,
                    top_p=(sampling.top_p or 1.0) if sampling else 1.0,
                ))
                owners.append(job)
            job.partials = []
        for job, result in zip(owners, self.generator.run(prompts), strict=True):
            if isinstance(result, GenerationTimeLimitError):
                job.error = GenerationTimeLimitError(
                    f"{result}: model {self.spec.name!r} allows {self.options['job_time_limit_s']:g} s per job "
                    "(options.job_time_limit_s); send a shorter text or a lower max_new_tokens"
                )
            else:
                job.partials.append(result)
                job.prompt_tokens += result.prompt_tokens
                job.generated_tokens += result.generated_tokens

    def _prompt_ids(self, messages: Messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)

    def _output(self, job: _Job) -> dict[str, Any]:
        text = "\n\n".join(p.text for p in job.partials)
        usage = {
            "prompt_tokens": job.prompt_tokens,
            "generated_tokens": job.generated_tokens,
            "finish_reason": "length" if any(p.finish_reason == "length" for p in job.partials) else "stop",
            **job.chunks.describe(),
        }
        if isinstance(job.input, SummarizeInput):
            summary, trimmed = within_length(text, max_words=job.input.max_words, max_sentences=job.input.max_sentences)
            return {"summary": summary, "style": "abstractive", "trimmed": trimmed, **usage}
        if isinstance(job.input, TranslateInput):
            return {"translation": text, "target_language": job.input.target_language,
                    "source_language": job.input.source_language, **usage}
        # The chunks whose answer was kept: several are combined into one by the model (docs/models.md).
        answered_in = job.answered_in if job.answered_in is not None else [] if is_no_answer(text) else [0]
        return {"answer": text, **usage, "answered_in_chunks": answered_in}


__all__ = ["CausalLM", "InputTooLongError", "shared_model"]
