"""What a `textq finetune` run can be told, and its defaults: shared by the CLI (torch-free) and worker/finetune.py."""

from __future__ import annotations

from dataclasses import dataclass

from producer.registry import MINILM_SOURCE


@dataclass(frozen=True, slots=True)
class FinetuneOptions:
    """How to train; the defaults suit a few hundred short texts on a CPU."""

    base: str = MINILM_SOURCE
    epochs: float = 10.0
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_length: int = 64
    seed: int = 13
    validation_fraction: float = 0.2
    # Evaluations (one per epoch) without a better validation macro-F1 before training stops.
    patience: int = 2
    new_labels: bool = False
    deploy: bool = False
    force: bool = False
    progress: bool = True


DEFAULT_OPTIONS = FinetuneOptions()

__all__ = ["DEFAULT_OPTIONS", "FinetuneOptions"]
