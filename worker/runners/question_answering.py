"""`hf_extractive_qa`: answers as spans of the context, from a SQuAD-style AutoModelForQuestionAnswering.

A context longer than the window is read in overlapping windows (stride), and the best-scoring span
across all of them wins; the output says how many windows were read.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from producer.contract import AnswerInput
from worker.runners.base import Runner, max_length, resolve_source

# Tokens consecutive windows share, so that an answer cut by one window's edge is whole in the next.
WINDOW_STRIDE = 64


class ExtractiveQA(Runner):
    def setup(self) -> None:
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModelForQuestionAnswering.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.max_tokens = max_length(self.tokenizer, self.spec, self.model.config)
        self.max_answer_tokens = int(self.spec.options.get("max_answer_tokens", 30))

    @torch.inference_mode()
    def predict(self, batch: list[AnswerInput]) -> list[dict[str, Any]]:
        enc = self.tokenizer(
            [x.question for x in batch], [x.context for x in batch], truncation="only_second",
            max_length=self.max_tokens, stride=min(WINDOW_STRIDE, self.max_tokens // 4),
            return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt",
        )
        owner = enc.pop("overflow_to_sample_mapping").tolist()
        offsets = enc.pop("offset_mapping").tolist()
        windows = [[w for w, job in enumerate(owner) if job == i] for i in range(len(batch))]
        keep = [w for i, ws in enumerate(windows) for w in (ws[:1] if batch[i].truncate else ws)]
        outputs = self.model(**{k: v[keep].to(self.device) for k, v in enc.items()})
        starts = torch.log_softmax(outputs.start_logits.float(), -1).cpu()
        ends = torch.log_softmax(outputs.end_logits.float(), -1).cpu()
        best: dict[int, tuple[float, int, int]] = {}
        for row, window in enumerate(keep):
            job = owner[window]
            context_tokens = [t for t, s in enumerate(enc.sequence_ids(window)) if s == 1]
            span = self._best_span(starts[row], ends[row], context_tokens)
            if span is not None and (job not in best or span[0] > best[job][0]):
                best[job] = (span[0], offsets[window][span[1]][0], offsets[window][span[2]][1])
        results = []
        for i, job_input in enumerate(batch):
            score, start, end = best.get(i, (float("-inf"), 0, 0))
            results.append({
                "answer": job_input.context[start:end], "score": round(float(torch.tensor(score).exp()), 6),
                "start": start, "end": end, "chunks": 1 if job_input.truncate else len(windows[i]),
                "truncated": bool(job_input.truncate) and len(windows[i]) > 1,
            })
        return results

    def _best_span(self, start: torch.Tensor, end: torch.Tensor, tokens: list[int]) -> tuple[float, int, int] | None:
        """(log-probability, first token, last token) of the best span inside the context tokens."""
        if not tokens:
            return None
        index = torch.tensor(tokens)
        # Every (start, end) pair of context tokens, end not before start and not too far after it.
        scores = start[index][:, None] + end[index][None, :]
        gap = index[None, :] - index[:, None]
        scores[(gap < 0) | (gap >= self.max_answer_tokens)] = float("-inf")
        flat = int(scores.argmax())
        first, last = divmod(flat, len(tokens))
        return float(scores[first, last]), tokens[first], tokens[last]


__all__ = ["ExtractiveQA"]
