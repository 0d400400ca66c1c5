"""Accuracy, macro-F1 and per-class precision/recall/F1 of a classifier's answers (plain Python)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def classification_metrics(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """`{"accuracy", "macro_f1", "examples", "per_class": {label: {precision, recall, f1, support}}}`;
    macro-F1 averages the classes of `labels` and any label in `truth`."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    classes = list(dict.fromkeys([*labels, *sorted(set(truth))]))
    per_class: dict[str, dict[str, float]] = {}
    for label in classes:
        hits = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
        said = sum(p == label for p in predicted)
        support = sum(t == label for t in truth)
        precision = hits / said if said else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": support}
    scored = [c for c in per_class.values() if c["support"]]
    return {
        "accuracy": round(sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth), 4) if truth else 0.0,
        "macro_f1": round(sum(c["f1"] for c in scored) / len(scored), 4) if scored else 0.0,
        "examples": len(truth),
        "per_class": per_class,
    }


__all__ = ["classification_metrics"]
