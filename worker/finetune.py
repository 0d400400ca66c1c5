"""`textq finetune`: train a sequence classifier from labelled examples and register it as a new version.

The data is checked before anything loads (worker.labelled_data); the base must be an encoder.
Training is `transformers.Trainer` with early stopping on the validation macro-F1. The weights are
written to a hidden directory in the model store and renamed to `<store>/<name>/<N>` in the same
transaction that registers `name@N`, so a failed or interrupted run registers nothing and leaves no
version directory behind.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from db import versions as store
from producer.finetune_options import DEFAULT_OPTIONS, FinetuneOptions
from producer.registry import MINILM_SOURCE
from producer.versions import ModelVersions, VersionView, version_label
from worker.classification_metrics import classification_metrics
from worker.labelled_data import (
    Example,
    TrainingDataError,
    check_training_set,
    examples_hash,
    label_counts,
    stratified_split,
)
from worker.runners.base import resolve_source

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # a registry model name (producer.registry.ModelSpec)
# Architectures that generate text: their sequence-classification heads sit on a decoder, not an encoder.
_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
METADATA_FILE = "textq-version.json"
REGISTER_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class FinetuneResult:
    version: VersionView
    metrics: dict[str, Any]
    # The version active before this run, and its figures on the same validation set.
    previous: VersionView | None = None
    previous_metrics: dict[str, Any] | None = None
    deployed: bool = False
    decision: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class BaseModelError(TrainingDataError):
    """`--base` is not an encoder textq can fine-tune (missing, or a text generator)."""


def finetune(
    name: str,
    examples: Sequence[Example],
    *,
    versions: ModelVersions,
    validation: Sequence[Example] | None = None,
    options: FinetuneOptions = DEFAULT_OPTIONS,
    data_info: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
) -> FinetuneResult:
    """Check, train, evaluate, register `name@N` (and deploy it if asked and not worse than the active one)."""
    if not _NAME.match(name):
        raise TrainingDataError(f"model name {name!r}: use 1-64 lowercase letters, digits, '-' or '_' (not first)")
    active = versions.active(name)
    if validation is None:
        train, validation = stratified_split(examples, options.validation_fraction, options.seed)
    else:
        train = list(examples)
    labels = check_training_set(train, validation, active_labels=None if active is None else active.labels,
                                active_name=None if active is None else active.label, new_labels=options.new_labels)
    if not validation:
        raise TrainingDataError("no validation examples: give --eval FILE or more examples per label")
    base_path = check_encoder(options.base)
    data = {**(data_info or {}), "train": len(train), "validation": len(validation), "labels": label_counts(train),
            "sha256": examples_hash(train)}
    echo(f"fine-tuning {name} from {options.base} on {len(train)} examples ({len(labels)} labels), "
         f"validating on {len(validation)}")
    versions.store_dir.mkdir(parents=True, exist_ok=True)
    scratch = versions.store_dir / f".partial-{name}-{uuid.uuid4().hex[:8]}"  # never read as a version
    try:
        scratch.mkdir()
        started = time.perf_counter()
        model, tokenizer = _train(base_path, labels, train, validation, options, scratch)
        seconds = time.perf_counter() - started
        metrics = evaluate(model, tokenizer, validation, labels, options)
        _save(model, tokenizer, scratch / "model", options.max_length)
        del model
        previous_metrics = _evaluate_version(versions, active, validation, options) if active is not None else None
        deploy, decision = deploy_decision(options, metrics, active, previous_metrics)
        new = store.NewVersion(model=name, base=options.base, data_hash=data["sha256"], labels=labels,
                               metrics={**metrics, "data": data, "options": _options_record(options)},
                               training_seconds=round(seconds, 2))
        version = _register(versions, new, scratch / "model", deploy=deploy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return FinetuneResult(version, metrics, active, previous_metrics, deploy, decision, data)


def check_encoder(base: str) -> str:
    """The local path of `base`, or BaseModelError if it is not an encoder with a classification head class."""
    try:
        path = resolve_source(base)
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise BaseModelError(f"--base {base}: cannot load a model configuration ({type(exc).__name__}: {exc})") from None
    architectures = list(getattr(config, "architectures", None) or [])
    generative = [a for a in architectures if a.endswith(_GENERATIVE)]
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or generative:
        raise BaseModelError(
            f"--base {base}: {config.model_type} ({', '.join(architectures) or 'no architecture'}) is not an encoder; "
            f"fine-tune an encoder such as {MINILM_SOURCE}, BERT, RoBERTa or DeBERTa"
        )
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise BaseModelError(f"--base {base}: transformers has no sequence-classification head for {config.model_type!r}")
    return path


class _Encoded(torch.utils.data.Dataset[dict[str, Any]]):
    """Tokenized examples (padded per batch by the collator)."""

    def __init__(self, tokenizer: Any, examples: Sequence[Example], label_ids: dict[str, int], max_length: int) -> None:
        encoded = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
        self.rows = [
            {**{key: values[i] for key, values in encoded.items()}, "labels": label_ids[e.label]}
            for i, e in enumerate(examples)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def _train(
    base_path: str, labels: list[str], train: Sequence[Example], validation: Sequence[Example],
    options: FinetuneOptions, scratch: Path,
) -> tuple[Any, Any]:
    logging.getLogger("transformers").setLevel(logging.ERROR)  # "newly initialized classifier weights" is the point here
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    set_seed(options.seed)  # the new classifier head is drawn while loading, before the Trainer seeds anything
    model = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids,
        ignore_mismatched_sizes=True,  # a classifier base with other labels gets a new head
    )
    arguments = TrainingArguments(
        output_dir=str(scratch / "checkpoints"),
        num_train_epochs=options.epochs,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=max(options.batch_size, 32),
        warmup_steps=0,
        weight_decay=0.01,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_only_model=True,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        seed=options.seed,
        data_seed=options.seed,
        report_to="none",
        disable_tqdm=not options.progress,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=_Encoded(tokenizer, train, label_ids, options.max_length),
        eval_dataset=_Encoded(tokenizer, validation, label_ids, options.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_trainer_metrics(labels),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=options.patience)],
    )
    if not options.progress:
        trainer.remove_callback(PrinterCallback)  # it prints each epoch's figures to stdout
    trainer.train()
    return trainer.model, tokenizer


def _trainer_metrics(labels: list[str]) -> Callable[[EvalPrediction], dict[str, float]]:
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        predicted = np.asarray(prediction.predictions).argmax(-1)
        truth = np.asarray(prediction.label_ids)
        metrics = classification_metrics([labels[i] for i in truth], [labels[i] for i in predicted], labels)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    return compute


@torch.inference_mode()
def predict_labels(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 64) -> list[str]:
    """The top label of each text."""
    model.eval()
    device = next(model.parameters()).device
    id2label = model.config.id2label
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
        answers += [str(id2label[int(i)]) for i in model(**encoded).logits.argmax(-1)]
    return answers


def evaluate(
    model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str], options: FinetuneOptions
) -> dict[str, Any]:
    predicted = predict_labels(model, tokenizer, [e.text for e in examples], options.max_length)
    return classification_metrics([e.label for e in examples], predicted, labels)


def _evaluate_version(
    versions: ModelVersions, version: VersionView, examples: Sequence[Example], options: FinetuneOptions
) -> dict[str, Any] | None:
    """`version`'s figures on `examples`, or None if its weights are not in this machine's store."""
    directory = versions.directory(version)
    if not directory.is_dir():
        log.warning("cannot compare with %s: %s is missing", version.label, directory)
        return None
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return evaluate(model, tokenizer, examples, version.labels, options)


def deploy_decision(
    options: FinetuneOptions, metrics: dict[str, Any], active: VersionView | None, previous: dict[str, Any] | None
) -> tuple[bool, str]:
    if not options.deploy:
        return False, "registered, not deployed (pass --deploy to make it active)"
    if active is None or options.force:
        return True, "deployed" + (" (--force)" if active is not None else "")
    if previous is None:
        return False, f"not deployed: {active.label} could not be evaluated here; use --force or textq deploy"
    if metrics["macro_f1"] >= previous["macro_f1"]:
        return True, f"deployed: validation macro-F1 {metrics['macro_f1']:.3f} >= {previous['macro_f1']:.3f} of {active.label}"
    return False, (f"not deployed: validation macro-F1 {metrics['macro_f1']:.3f} < {previous['macro_f1']:.3f} of "
                   f"{active.label} (--force deploys anyway)")


def _save(model: Any, tokenizer: Any, directory: Path, max_length: int) -> None:
    tokenizer.model_max_length = max_length  # served with the truncation it was trained with
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _register(versions: ModelVersions, new: store.NewVersion, weights: Path, *, deploy: bool) -> VersionView:
    """Move the weights to `<store>/<name>/<N>` and register `name@N` in one transaction: if the
    transaction fails, the directory goes; a concurrent run that took N makes this one try N+1."""
    model_dir = versions.store_dir / new.model
    model_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        target: Path | None = None
        try:
            with versions.sessions.begin() as session:
                # A directory left by a run killed after its rename but before its commit keeps its number.
                taken = max((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), default=0)
                number = store.next_version_number(session, model=new.model, at_least=taken + 1)
                row = store.add_version(session, new=new, version=number, path=f"{new.model}/{number}")
                (weights / METADATA_FILE).write_text(json.dumps(_metadata(new, number), indent=2))
                target = model_dir / str(number)
                weights.rename(target)
                if deploy:
                    store.activate_version(session, model=new.model, version=number)
            return versions.get(row.label)
        except IntegrityError:
            _undo_rename(target, weights)
            if attempt == REGISTER_ATTEMPTS:
                raise
        except BaseException:
            _undo_rename(target, weights)
            raise
    raise AssertionError("unreachable")


def _undo_rename(target: Path | None, weights: Path) -> None:
    if target is not None and target.exists() and not weights.exists():
        target.rename(weights)


def _metadata(new: store.NewVersion, number: int) -> dict[str, Any]:
    return {"version": version_label(new.model, number), **asdict(new)}


def _options_record(options: FinetuneOptions) -> dict[str, Any]:
    return {k: v for k, v in asdict(options).items() if k not in ("deploy", "force", "progress")}


__all__ = [
    "BaseModelError",
    "FinetuneResult",
    "check_encoder",
    "deploy_decision",
    "evaluate",
    "finetune",
    "predict_labels",
]
