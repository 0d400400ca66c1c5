"""Extractive summaries: sentences nearest the document's centroid, early ones favoured, repeats penalised."""

from __future__ import annotations

import re
from typing import Any

import torch

from producer.contract import SummarizeInput
from worker.runners.encoder import EncoderRunner

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n\s*\n+")
POSITION_WEIGHT = 0.1
REDUNDANCY_WEIGHT = 0.7


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def choose_sentences(vectors: torch.Tensor, k: int) -> list[int]:
    """Indices (ascending) of up to `k` sentences by centroid similarity + position − redundancy."""
    n = vectors.shape[0]
    if n <= k:
        return list(range(n))
    centroid = torch.nn.functional.normalize(vectors.mean(0), dim=0)
    relevance = vectors @ centroid + POSITION_WEIGHT * (1 - torch.arange(n, dtype=vectors.dtype) / n)
    similarity = vectors @ vectors.T
    chosen: list[int] = []
    for _ in range(k):
        penalty = similarity[:, chosen].max(1).values if chosen else torch.zeros(n)
        scores = relevance - REDUNDANCY_WEIGHT * penalty
        if chosen:
            scores[chosen] = float("-inf")
        chosen.append(int(scores.argmax()))
    return sorted(chosen)


class ExtractiveSummarizer(EncoderRunner):
    def predict(self, batch: list[SummarizeInput]) -> list[dict[str, Any]]:
        documents = [split_sentences(x.text) for x in batch]
        # One forward pass over every sentence of every document in the batch.
        vectors = self.embed([s for doc in documents for s in doc]).cpu()
        outputs, offset = [], 0
        for doc, job in zip(documents, batch, strict=True):
            picked = choose_sentences(vectors[offset : offset + len(doc)], job.max_sentences)
            offset += len(doc)
            outputs.append({"summary": " ".join(doc[i] for i in picked), "sentences": picked})
        return outputs
