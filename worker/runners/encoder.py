"""Sentence embeddings from a MiniLM-style encoder: mean pooling over tokens, L2-normalised."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer

from worker.runners.backends import Forward, load_forward
from worker.runners.base import Runner, max_length, resolve_source


class EncoderRunner(Runner):
    """Base for the runners built on sentence embeddings (prototype, zero-shot, extractive)."""

    def setup(self) -> None:
        path = resolve_source(self.spec.source)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.forward: Forward = load_forward(
            self.spec, path, auto_class=AutoModel, output="last_hidden_state", device=self.device, dtype=self.dtype,
            input_names=list(self.tokenizer.model_input_names),
        )
        self.max_tokens = max_length(self.tokenizer, self.spec, AutoConfig.from_pretrained(path))

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
            ).to(self.forward.device)
            hidden = self.forward(enc).float()  # pooled in float32 whatever the model's precision
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, dim=-1).to(self.device))
        return torch.cat(chunks) if chunks else torch.empty(0)


def softmax_scores(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities → probabilities; a low temperature spreads MiniLM's narrow cosine range."""
    return torch.softmax(similarities / temperature, dim=-1)
