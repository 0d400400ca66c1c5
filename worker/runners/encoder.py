"""Sentence embeddings from a MiniLM-style encoder: mean pooling over tokens, L2-normalised."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from worker.runners.base import Runner, max_length, resolve_source


class EncoderRunner(Runner):
    """Base for the runners built on sentence embeddings (prototype, zero-shot, extractive)."""

    def setup(self) -> None:
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.max_tokens = max_length(self.tokenizer, self.spec, self.model.config)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Normalised embeddings (one row per text), computed in chunks of `max_batch_size`."""
        chunks = []
        step = self.spec.max_batch_size
        for start in range(0, len(texts), step):
            enc = self.tokenizer(
                texts[start : start + step],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled.float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0)


def softmax_scores(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities → probabilities; a low temperature spreads MiniLM's narrow cosine range."""
    return torch.softmax(similarities / temperature, dim=-1)

