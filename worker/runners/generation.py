"""Batched generation with a causal LM: left padding, per-row token limits, stop at end of turn, deadlines.

One `generate` call serves a group of prompts sorted by length and bounded by a token budget that
counts each prompt plus its `max_new_tokens`. Rows stop on their own: at an end-of-turn token
(`stop`), at their own `max_new_tokens` (`length`), or at their job's deadline (a time-limit error).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from worker.runners.chunking import token_bounded

# Chat templates' end-of-turn markers, where a model's configured EOS is another token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>")


class GenerationTimeLimitError(TimeoutError):
    """A job's generation ran past its model's per-job time limit (options.job_time_limit_s)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """One generation: its prompt's token ids, its limits, and its job's deadline (time.monotonic)."""

    ids: list[int]
    max_new_tokens: int
    deadline: float
    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def sampling(self) -> tuple[float, float]:
        return (self.temperature, self.top_p) if self.temperature > 0 else (0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens)


class _RowLimits(StoppingCriteria):
    """Ends each row at a stop token, its own max_new_tokens or its deadline, and remembers which and where."""

    def __init__(self, prompt_length: int, prompts: Sequence[Prompt], stop_ids: set[int]) -> None:
        self.prompt_length = prompt_length
        self.max_new = [p.max_new_tokens for p in prompts]
        self.deadlines = [p.deadline for p in prompts]
        self.stop_ids = stop_ids
        self.ended: list[tuple[str, int] | None] = [None] * len(prompts)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        last = input_ids[:, -1].tolist()
        now = time.monotonic()
        for row, ended in enumerate(self.ended):
            if ended is not None:
                continue
            if last[row] in self.stop_ids:
                self.ended[row] = ("stop", generated - 1)
            elif generated >= self.max_new[row]:
                self.ended[row] = ("length", generated)
            elif now > self.deadlines[row]:
                self.ended[row] = ("time_limit", generated)
        done = torch.tensor([e is not None for e in self.ended], device=input_ids.device)
        return done  # type: ignore[return-value]


class Generator:
    """Runs prompts through `model` in token-bounded groups; only the batcher thread calls it."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int, max_batch_tokens: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = end_of_turn_ids(model, tokenizer)

    def run(self, prompts: Sequence[Prompt]) -> list[Generated | GenerationTimeLimitError]:
        """One result per prompt, in order: the text, or the time-limit error of a row past its deadline."""
        results: list[Generated | GenerationTimeLimitError | None] = [None] * len(prompts)
        by_sampling: dict[tuple[float, float], list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_sampling.setdefault(prompt.sampling, []).append(index)
        for indices in by_sampling.values():
            sizes = [len(prompts[i].ids) + prompts[i].max_new_tokens for i in indices]
            for group in token_bounded(sizes, max_tokens=self.max_batch_tokens, max_items=self.max_batch_size):
                rows = [indices[g] for g in group]
                for row, result in zip(rows, self._generate([prompts[r] for r in rows]), strict=True):
                    results[row] = result
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _generate(self, prompts: Sequence[Prompt]) -> list[Generated | GenerationTimeLimitError]:
        longest = max(len(p.ids) for p in prompts)
        # Left padding: every row's last prompt token sits in the last column, where generation starts.
        input_ids = torch.tensor([[self.pad_id] * (longest - len(p.ids)) + p.ids for p in prompts])
        attention = torch.tensor([[0] * (longest - len(p.ids)) + [1] * len(p.ids) for p in prompts])
        limits = _RowLimits(longest, prompts, self.stop_ids)
        temperature, top_p = prompts[0].sampling
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max(p.max_new_tokens for p in prompts),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None,
            top_k=None,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.stop_ids),
        )
        output = self.model.generate(
            input_ids=input_ids.to(self.model.device), attention_mask=attention.to(self.model.device),
            generation_config=config, stopping_criteria=StoppingCriteriaList([limits]),
        )
        results: list[Generated | GenerationTimeLimitError] = []
        for row, prompt in enumerate(prompts):
            # generate() also ends at max_new_tokens by itself; a row never marked ended reached it.
            reason, kept = limits.ended[row] or ("length", output.shape[1] - longest)
            if reason == "time_limit":
                results.append(GenerationTimeLimitError(f"generation stopped after {kept} tokens: past the job's time limit"))
                continue
            tokens = output[row, longest : longest + kept].tolist()
            results.append(Generated(
                text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                prompt_tokens=len(prompt.ids), generated_tokens=kept + (reason == "stop"), finish_reason=reason,
            ))
        return results


def end_of_turn_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end the assistant's turn: the model's and tokenizer's EOS, ChatML's <|im_end|> and
    Gemma's <end_of_turn>."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for marker in END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    if not ids:
        raise ValueError("the model defines no end-of-turn token (eos_token_id): generation would never stop")
    return ids


__all__ = ["Generated", "GenerationTimeLimitError", "Generator", "Prompt", "end_of_turn_ids"]
