"""Labelled examples for training and evaluation: JSON lines or CSV files (`text`, `label`), checked
before any training starts, and split into training and validation sets.

No torch here: every check is cheap and runs before the model loads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.errors import TextqError

DEMO_DIR = Path(__file__).resolve().parent / "data" / "support"
# `--data demo:train` / `--eval demo:heldout`: the support-ticket set shipped with textq.
DEMO_PREFIX = "demo:"
MAX_PROBLEMS_SHOWN = 5


class TrainingDataError(TextqError, ValueError):
    """Training or evaluation data that cannot train a classifier; the message names the file, line and rule."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str


def data_path(name: str) -> Path:
    """A data file by path, or `demo:train` / `demo:heldout` for the shipped support-ticket set."""
    if name.startswith(DEMO_PREFIX):
        path = DEMO_DIR / f"{name.removeprefix(DEMO_PREFIX)}.jsonl"
        if not path.is_file():
            shipped = sorted(DEMO_PREFIX + p.stem for p in DEMO_DIR.glob("*.jsonl"))
            raise TrainingDataError(f"{name}: no such demo set; shipped: {', '.join(shipped)}")
        return path
    return Path(name)


def load_examples(path: Path) -> list[Example]:
    """Every example of a `.jsonl` or `.csv` file, or TrainingDataError listing the bad lines."""
    if not path.is_file():
        raise TrainingDataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = _json_lines(path)
    elif suffix == ".csv":
        records = _csv_rows(path)
    else:
        raise TrainingDataError(f"{path}: unknown format {suffix or '(no suffix)'!r}; use .jsonl (JSON lines) or .csv")
    examples: list[Example] = []
    problems: list[str] = []
    for line, record in records:
        try:
            examples.append(_example(record))
        except ValueError as exc:
            problems.append(f"line {line}: {exc}")
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise TrainingDataError(f"{path}: {shown}{more}")
    if not examples:
        raise TrainingDataError(f"{path}: no examples")
    return examples


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}: line {number}: not JSON ({exc.msg})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = sorted({"text", "label"} - set(reader.fieldnames or []))
        if missing:
            raise TrainingDataError(
                f"{path}: missing column(s) {', '.join(missing)}; "
                f"the header has {', '.join(reader.fieldnames or []) or 'nothing'}"
            )
        for row in reader:
            yield reader.line_num, row


def _example(record: Any) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with text and label, got {type(record).__name__}")
    missing = [f for f in ("text", "label") if f not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    text, label = record["text"], record["label"]
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty")
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {type(label).__name__} {label!r}")
    if not label.strip():
        raise ValueError("label is empty")
    return Example(text, label.strip())


def check_training_set(
    train: Sequence[Example], validation: Sequence[Example] | None, *, active_labels: Sequence[str] | None,
    active_name: str | None = None, new_labels: bool = False,
) -> list[str]:
    """The label set to train (sorted), or TrainingDataError: one class only, validation labels
    unseen in training, a label set other than the active version's (unless `new_labels`)."""
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise TrainingDataError(
            f"training data has one class only ({', '.join(labels)}); a classifier needs examples of at least two labels"
        )
    if validation is not None:
        unseen = sorted({e.label for e in validation} - set(labels))
        if unseen:
            raise TrainingDataError(f"--eval has labels the training data does not: {', '.join(unseen)}")
    if active_labels is not None and set(active_labels) != set(labels) and not new_labels:
        added = sorted(set(labels) - set(active_labels))
        dropped = sorted(set(active_labels) - set(labels))
        raise TrainingDataError(
            f"the labels differ from the active version {active_name}'s "
            f"(new: {', '.join(added) or 'none'}; missing: {', '.join(dropped) or 'none'}); "
            "pass --new-labels to train with this label set"
        )
    return labels


def stratified_split(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): `fraction` of each label's examples held out, at least one of every
    label with two or more; the same seed gives the same split."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    train: list[Example] = []
    validation: list[Example] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        held = min(len(group) - 1, max(1, round(len(group) * fraction))) if len(group) > 1 else 0
        validation += group[:held]
        train += group[held:]
    rng.shuffle(train)
    return train, validation


def merge_corrections(examples: Iterable[Example], corrections: Iterable[Example]) -> list[Example]:
    """`examples` plus `corrections`; a corrected text replaces the same text's example."""
    corrected = {c.text: c for c in corrections}
    return [e for e in examples if e.text not in corrected] + list(corrected.values())


def examples_hash(examples: Sequence[Example]) -> str:
    """`sha256:<hex>` of the examples as JSON lines, in order: which data a version was trained on."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False).encode() + b"\n")
    return f"sha256:{digest.hexdigest()}"


def label_counts(examples: Sequence[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.label for e in examples).items()))


__all__ = [
    "DEMO_PREFIX",
    "Example",
    "TrainingDataError",
    "check_training_set",
    "data_path",
    "examples_hash",
    "label_counts",
    "load_examples",
    "merge_corrections",
    "stratified_split",
]
