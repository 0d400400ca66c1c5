"""Classification runners on sentence embeddings: class prototypes and zero-shot labels."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from producer.contract import ClassifyInput
from worker.labelled_data import load_examples
from worker.runners.base import label_scores
from worker.runners.embeddings import describe_chunks, embed_long
from worker.runners.encoder import EncoderRunner, softmax_scores

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data"


class PrototypeClassifier(EncoderRunner):
    """Fixed labels: the nearest class prototype (mean embedding of `worker/data/<examples>.json`); no training run."""

    def setup(self) -> None:
        super().setup()
        examples = load_prototype_examples(str(self.spec.options.get("examples", self.spec.name)))
        self.labels = list(examples)
        self.temperature = float(self.spec.options.get("temperature", 0.05))
        self.prototypes = torch.stack([F.normalize(self.embed(examples[label]).mean(0), dim=0) for label in self.labels])

    def predict(self, batch: list[ClassifyInput]) -> list[dict[str, Any]]:
        vectors, chunks = embed_long(self, batch)
        probabilities = softmax_scores(vectors @ self.prototypes.T, self.temperature)
        return [{**label_scores(row.tolist(), self.labels), **describe_chunks(c)}
                for row, c in zip(probabilities, chunks, strict=True)]


def load_prototype_examples(name: str) -> dict[str, list[str]]:
    """Texts by label: `worker/data/<name>.json` ({label: [texts]}), or a labelled `.jsonl`/`.csv` file
    (a path, or one under worker/data such as `support/train.jsonl`: the set `textq finetune` trains on)."""
    if not name.endswith((".jsonl", ".csv")):
        loaded: dict[str, list[str]] = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
        return loaded
    path = Path(name) if Path(name).is_absolute() else EXAMPLES_DIR / name
    grouped: dict[str, list[str]] = {}
    for example in load_examples(path):
        grouped.setdefault(example.label, []).append(example.text)
    return dict(sorted(grouped.items()))


class ZeroShotClassifier(EncoderRunner):
    """Labels given per request, scored by similarity to a hypothesis sentence per label (`options.template`)."""

    def setup(self) -> None:
        super().setup()
        self.template = str(self.spec.options.get("template", "This text is about {label}."))
        self.temperature = float(self.spec.options.get("temperature", 0.05))
        self._label_vector = lru_cache(maxsize=4096)(self._embed_label)

    def _embed_label(self, label: str) -> torch.Tensor:
        return self.embed([self.template.format(label=label)])[0]

    def predict(self, batch: list[ClassifyInput]) -> list[dict[str, Any]]:
        texts, chunks = embed_long(self, batch)
        outputs = []
        for vector, job, c in zip(texts, batch, chunks, strict=True):
            labels = job.labels or []
            label_matrix = torch.stack([self._label_vector(label) for label in labels])
            scores = label_scores(softmax_scores(label_matrix @ vector, self.temperature).tolist(), labels)
            outputs.append({**scores, **describe_chunks(c)})
        return outputs
