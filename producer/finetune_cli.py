"""The `textq` commands of the fine-tune loop: finetune, deploy, delete-version, feedback, and the
versions part of `textq models`.

`finetune` trains (worker side): it imports torch only when it runs, so the CLI stays torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from db.engine import session_factory
from db.settings import DatabaseSettings
from producer.feedback import feedback_examples
from producer.finetune_options import DEFAULT_OPTIONS as DEFAULTS
from producer.finetune_options import FinetuneOptions
from producer.versions import ModelVersions, VersionView, version_settings


def _versions() -> ModelVersions:
    # Not the Client's autocommit sessions: registering a version is one transaction with its rename.
    return ModelVersions(session_factory(DatabaseSettings().database_url))


@click.command()
@click.argument("name")
@click.option("--data", "data", help="Training examples: .jsonl or .csv with text and label (demo:train: the shipped set).")
@click.option("--eval", "eval_data", help="Validation examples (default: a stratified, seeded split of --data).")
@click.option("--from-feedback", is_flag=True, help="Train on the corrections stored with `textq feedback` (plus --data).")
@click.option("--base", help="Encoder to start from: directory, cached hub id or package:<module> [default: the shipped MiniLM].")
@click.option("--epochs", type=float, default=DEFAULTS.epochs, show_default=True,
              help="At most this many (early stopping ends sooner).")
@click.option("--learning-rate", type=float, default=DEFAULTS.learning_rate, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=DEFAULTS.max_length, show_default=True, help="Tokens per text.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seeds the split, the head and the data order.")
@click.option("--validation-fraction", type=click.FloatRange(0.05, 0.5), default=DEFAULTS.validation_fraction, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=DEFAULTS.patience, show_default=True,
              help="Epochs without a better validation macro-F1 before training stops.")
@click.option("--new-labels", is_flag=True, help="Allow a label set other than the active version's.")
@click.option("--deploy", is_flag=True, help="Activate the new version if it is not worse than the active one on validation.")
@click.option("--force", is_flag=True, help="With --deploy: activate it even if it is worse.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def finetune(
    name: str, data: str | None, eval_data: str | None, from_feedback: bool, base: str | None, epochs: float,
    learning_rate: float, batch_size: int, max_length: int, seed: int, validation_fraction: float, patience: int,
    new_labels: bool, deploy: bool, force: bool, as_json: bool,
) -> None:
    """Fine-tune a classifier NAME on labelled examples; registers version NAME@N (see `textq models`)."""
    from worker.labelled_data import Example, TrainingDataError, data_path, load_examples, merge_corrections

    versions = _versions()
    examples: list[Example] = []
    info: dict[str, Any] = {}
    if data is not None:
        examples = load_examples(data_path(data))
        info["file"] = data
    if from_feedback:
        corrections = [Example(text, label) for text, label in feedback_examples(versions.sessions, name)]
        if not corrections:
            raise TrainingDataError(f"no feedback stored for {name!r}: correct answers with textq feedback JOB_ID --label L")
        examples = merge_corrections(examples, corrections)
        info["feedback"] = len(corrections)
    if not examples:
        raise click.UsageError("give --data FILE, --from-feedback, or both")
    validation = load_examples(data_path(eval_data)) if eval_data is not None else None
    if validation is not None:
        info["eval_file"] = eval_data

    from worker.finetune import finetune as run_finetune  # torch: imported only now

    options = FinetuneOptions(
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, max_length=max_length, seed=seed,
        validation_fraction=validation_fraction, patience=patience, new_labels=new_labels, deploy=deploy, force=force,
        progress=not as_json, **({"base": base} if base else {}),
    )
    result = run_finetune(name, examples, versions=versions, validation=validation, options=options, data_info=info,
                          echo=(lambda _line: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps({
            "version": result.version.model_dump(mode="json"), "deployed": result.deployed, "decision": result.decision,
            "previous": None if result.previous is None else result.previous.label,
            "previous_metrics": result.previous_metrics,
        }, indent=2))
        return
    click.echo("")
    click.echo(metrics_table(result.version.label, result.metrics,
                             None if result.previous is None else f"{result.previous.label} (active)", result.previous_metrics))
    click.echo(f"\n{result.version.label}: trained in {result.version.training_seconds:.1f} s; {result.decision}")
    click.echo(f"weights: {versions.directory(result.version)}")


def metrics_table(label: str, metrics: dict[str, Any], other_label: str | None, other: dict[str, Any] | None) -> str:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of a version, beside another's on the same examples."""
    columns = [(label, metrics)] + ([(other_label or "", other)] if other is not None else [])
    classes = list(dict.fromkeys([c for _, m in columns for c in m["per_class"]]))
    width = max([len(c) for c in classes] + [10])
    lines = [f"{'':<{width}}  " + "  ".join(f"{name:<22}" for name, _ in columns),
             f"{'':<{width}}  " + "  ".join(f"{'precision recall f1':<22}" for _ in columns)]
    for cls in classes:
        cells = []
        for _, m in columns:
            c = m["per_class"].get(cls)
            cells.append(f"{c['precision']:<9.3f} {c['recall']:<6.3f} {c['f1']:<5.3f}" if c else f"{'-':<22}")
        support = metrics["per_class"].get(cls, {}).get("support", 0)
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{cell:<22}" for cell in cells) + f"  n={support}")
    for key, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        lines.append(f"{title:<{width}}  " + "  ".join(f"{m[key]:<22.3f}" for _, m in columns))
    return "\n".join(lines)


@click.command()
@click.argument("ref")
def deploy(ref: str) -> None:
    """Make version REF (NAME@N) the active one; workers serving NAME switch to it within seconds.

    Rolling back is deploying the previous version.
    """
    version = _versions().deploy(ref)
    click.echo(f"{version.label} is active; workers switch within ~{version_settings().version_poll_s:g} s")


@click.command("delete-version")
@click.argument("ref")
def delete_version(ref: str) -> None:
    """Delete version REF (NAME@N): its row and weights. The active version cannot be deleted."""
    version = _versions().delete(ref)
    click.echo(f"deleted {version.label}; jobs still pinned to it will fail")


@click.command()
@click.argument("job_id")
@click.option("--label", required=True, help="The label the job should have answered.")
def feedback(job_id: str, label: str) -> None:
    """Store the right LABEL of a succeeded classification job (for `textq finetune --from-feedback`)."""
    from producer.client import Client

    with Client() as client:
        stored = client.feedback(job_id, label=label)
    click.echo(f"stored: job {stored.job_id} ({stored.model_version or stored.model}) should be {stored.label!r}")


def print_versions() -> None:
    """The fine-tuned models' versions, for `textq models` (which lists the registry without a database too)."""
    try:
        listed = _versions().list()
    except SQLAlchemyError as exc:
        click.echo(f"\n(versions not listed: the database did not answer: {type(exc).__name__}; textq db upgrade?)")
        return
    if not listed:
        return
    click.echo(f"\nfine-tuned versions (model store: {Path(version_settings().model_store).resolve()}):")
    for v in listed:
        click.echo(_version_line(v))


def _version_line(v: VersionView) -> str:
    metrics = f"accuracy {v.metrics.get('accuracy', 0):.3f}  macro-F1 {v.metrics.get('macro_f1', 0):.3f}"
    return (f"{'*' if v.active else ' '} {v.label:<20} {metrics}  trained {v.training_seconds:.0f}s  "
            f"{v.created_at:%Y-%m-%d %H:%M} UTC  base={v.base}")


COMMANDS = [finetune, deploy, delete_version, feedback]

__all__ = ["COMMANDS", "metrics_table", "print_versions"]
