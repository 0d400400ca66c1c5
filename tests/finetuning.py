"""Helpers for the fine-tuning tests: small training sets from the shipped support tickets, and
quick training runs (tiny base model, one epoch) registered in a test's own model store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from db.engine import session_factory
from producer.versions import ModelVersions, VersionView
from tests.conftest import TEST_ROOT, Backend

TEXTQ = [sys.executable, "-c", "from producer.cli import main; main()"]
DEMO_DIR = Path(__file__).resolve().parent.parent / "worker" / "data" / "support"


def demo_examples(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DEMO_DIR / f"{name}.jsonl").read_text().splitlines()]


def subset(name: str, per_label: int) -> list[dict[str, str]]:
    """The first `per_label` examples of each label of a shipped set, in file order."""
    taken: dict[str, int] = defaultdict(int)
    picked = []
    for example in demo_examples(name):
        if taken[example["label"]] < per_label:
            taken[example["label"]] += 1
            picked.append(example)
    return picked


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def model_versions(backend: Backend, store: Path) -> ModelVersions:
    return ModelVersions(session_factory(backend.database_url), store_dir=store)


def quick_finetune(
    versions: ModelVersions, name: str, *, base: str | None = None, deploy: bool = False, per_label: int = 6,
    eval_per_label: int = 2, exclude: str | None = None, **options: Any,
) -> VersionView:
    """One epoch of training on a few examples per label (the tests' tiny BERT unless `base`),
    without the label `exclude`."""
    from producer.finetune_options import FinetuneOptions
    from worker.finetune import finetune
    from worker.labelled_data import Example

    train = [Example(e["text"], e["label"]) for e in subset("train", per_label) if e["label"] != exclude]
    validation = [Example(e["text"], e["label"]) for e in subset("heldout", eval_per_label) if e["label"] != exclude]
    settings = {"epochs": 1.0, "max_length": 32, "batch_size": 16, "progress": False, **options}
    result = finetune(name, train, versions=versions, validation=validation, echo=lambda _: None,
                      options=FinetuneOptions(base=base or str(TEST_ROOT / "tiny-classifier"), deploy=deploy, **settings))
    return result.version


def textq(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TEXTQ, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def version_dirs(store: Path) -> list[Path]:
    """Every directory under the store's model folders (versions) and every scratch directory."""
    if not store.exists():
        return []
    return sorted([p for p in store.glob("*/*") if p.is_dir()] + list(store.glob(".partial-*")))


__all__ = ["demo_examples", "model_versions", "quick_finetune", "subset", "textq", "version_dirs", "write_jsonl"]
