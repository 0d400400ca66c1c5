"""Embeddings of whole texts, however long: chunked by tokens with overlap, chunk vectors averaged.

`embed_long` serves the `embed` task (EmbeddingRunner) and the encoder classifiers: the mean of
chunk vectors, dotted with a prototype or label vector, is the mean of the chunks' logits.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch
import torch.nn.functional as F

from producer.contract import ClassifyInput, EmbedInput
from worker.runners.chunking import Chunks, in_runs, split_by_tokens
from worker.runners.encoder import EncoderRunner

# Tokens shared by consecutive chunks, so that a sentence cut at a chunk edge is read whole once.
CHUNK_OVERLAP_TOKENS = 32


def embed_long(runner: EncoderRunner, inputs: list[ClassifyInput] | list[EmbedInput]) -> tuple[torch.Tensor, list[Chunks]]:
    """Per input: the mean of its chunks' normalised vectors (not renormalised), and its chunks."""
    # The window less the [CLS] and [SEP] tokens the tokenizer adds to every chunk.
    window = runner.max_tokens - runner.tokenizer.num_special_tokens_to_add()
    chunks = [split_by_tokens(runner.tokenizer, x.text, window, CHUNK_OVERLAP_TOKENS, truncate=bool(x.truncate))
              for x in inputs]
    vectors = runner.embed([text for c in chunks for text in c.texts])
    means = [run.mean(0) for run in in_runs(vectors, [len(c.texts) for c in chunks])]
    return (torch.stack(means) if means else torch.empty(0)), chunks


def describe_chunks(chunks: Chunks) -> dict[str, Any]:
    """What a classification output says of its input's length: a long text's logits are the chunks' mean."""
    return {**chunks.describe(), "aggregation": "mean_logits"}


def source_version(source: str | None) -> str | None:
    """`<package>==<version>` for weights shipped in a package; the source itself otherwise."""
    if source is None:
        return None
    for prefix in ("package:", "gguf:"):
        if source.startswith(prefix):
            module = source.removeprefix(prefix)
            try:
                return f"{module}=={importlib.metadata.version(module.replace('_', '-'))}"
            except importlib.metadata.PackageNotFoundError:
                return source
    return source


class EmbeddingRunner(EncoderRunner):
    """`embed` jobs: one L2-normalised vector per text (long texts: the normalised mean of chunk vectors)."""

    def setup(self) -> None:
        super().setup()
        self.version = source_version(self.spec.source)

    def predict(self, batch: list[EmbedInput]) -> list[dict[str, Any]]:
        means, chunks = embed_long(self, batch)
        vectors = F.normalize(means, dim=-1) if len(batch) else means
        return [
            {"embedding": [round(v, 7) for v in vector.tolist()], "dimension": int(vector.shape[0]),
             "model": self.spec.name, "model_version": self.version, "normalized": True,
             "aggregation": "mean of chunk vectors, normalised", **c.describe()}
            for vector, c in zip(vectors, chunks, strict=True)
        ]


__all__ = ["CHUNK_OVERLAP_TOKENS", "EmbeddingRunner", "describe_chunks", "embed_long", "source_version"]
