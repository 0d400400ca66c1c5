"""Extractive summaries: sentences nearest the document's centroid, early ones favoured, repeats penalised.

A document longer than the encoder's window is map-reduced like the generated summaries: its sentences
are packed into window-sized chunks, up to `max_sentences` are picked in each chunk, and then up to
`max_sentences` among those picks, against the whole document's centroid.
"""

from __future__ import annotations

from typing import Any

import torch

from producer.contract import SummarizeInput
from worker.runners.chunking import Chunks, in_runs, pack_consecutive, split_by_tokens
from worker.runners.encoder import EncoderRunner
from worker.runners.sentences import split_sentences

POSITION_WEIGHT = 0.1
REDUNDANCY_WEIGHT = 0.7


def choose_sentences(vectors: torch.Tensor, k: int, *, centroid: torch.Tensor | None = None,
                     positions: torch.Tensor | None = None) -> list[int]:
    """Indices (ascending) of up to `k` sentences by centroid similarity + position − redundancy.
    `centroid` defaults to the sentences' own, `positions` (0 = the document's start, 1 = its end) to their order."""
    n = vectors.shape[0]
    if n <= k:
        return list(range(n))
    centroid = torch.nn.functional.normalize(vectors.mean(0) if centroid is None else centroid, dim=0)
    positions = torch.arange(n, dtype=vectors.dtype) / n if positions is None else positions
    relevance = vectors @ centroid + POSITION_WEIGHT * (1 - positions)
    similarity = vectors @ vectors.T
    chosen: list[int] = []
    for _ in range(k):
        penalty = similarity[:, chosen].max(1).values if chosen else torch.zeros(n)
        scores = relevance - REDUNDANCY_WEIGHT * penalty
        if chosen:
            scores[chosen] = float("-inf")
        chosen.append(int(scores.argmax()))
    return sorted(chosen)


def map_reduce_sentences(vectors: torch.Tensor, chunks: list[list[int]], k: int) -> list[int]:
    """Up to `k` sentences picked in each chunk (lists of sentence indices), then `k` among those picks."""
    if len(chunks) == 1:
        return choose_sentences(vectors[chunks[0]], k)
    picks = sorted(chunk[i] for chunk in chunks for i in choose_sentences(vectors[chunk], k))
    chosen = choose_sentences(vectors[picks], k, centroid=vectors.mean(0),
                              positions=torch.tensor(picks, dtype=vectors.dtype) / vectors.shape[0])
    return [picks[i] for i in chosen]


class ExtractiveSummarizer(EncoderRunner):
    def predict(self, batch: list[SummarizeInput]) -> list[dict[str, Any]]:
        documents = [self._chunked_sentences(x) for x in batch]
        # One forward pass over every sentence of every document in the batch.
        vectors = self.embed([s for sentences, _, _ in documents for s in sentences]).cpu()
        outputs = []
        per_document = in_runs(vectors, [len(sentences) for sentences, _, _ in documents])
        for (sentences, chunks, described), document_vectors, job in zip(documents, per_document, batch, strict=True):
            picked = map_reduce_sentences(document_vectors, chunks, job.max_sentences)
            outputs.append({"summary": " ".join(sentences[i] for i in picked), "sentences": picked,
                            **described.describe()})
        return outputs

    def _chunked_sentences(self, job: SummarizeInput) -> tuple[list[str], list[list[int]], Chunks]:
        """The sentences read (a sentence longer than the window split at token boundaries, never cut),
        their chunks (consecutive sentence indices within one window), and what the output says of them."""
        window = self.max_tokens - self.tokenizer.num_special_tokens_to_add()
        sentences: list[str] = []
        lengths: list[int] = []
        split = split_sentences(job.text)
        for sentence, n_tokens in zip(split, self._n_tokens(split), strict=True):
            pieces = [sentence] if n_tokens <= window else split_by_tokens(self.tokenizer, sentence, window, 0).texts
            sentences += pieces
            lengths += [n_tokens] if len(pieces) == 1 else self._n_tokens(pieces)
        chunks = pack_consecutive(range(len(sentences)), lambda group: sum(lengths[i] for i in group) <= window)
        if job.truncate and len(chunks) > 1:
            first = chunks[0]
            return sentences[: len(first)], [first], Chunks([" ".join(sentences[i] for i in first)], truncated=True)
        return sentences, chunks, Chunks([" ".join(sentences[i] for i in chunk) for chunk in chunks])

    def _n_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
