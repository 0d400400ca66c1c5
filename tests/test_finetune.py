"""`textq finetune`: bad data and bad bases are refused before training, an interrupted run leaves
nothing behind, a run registers NAME@N with its metadata, and deploys only when not worse."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from producer.contract import ClassifyInput
from producer.versions import ModelVersions
from tests.conftest import TEST_ROOT, Backend
from tests.finetuning import TEXTQ, model_versions, quick_finetune, subset, textq, version_dirs, write_jsonl
from tests.helpers import wait_until


@pytest.fixture()
def sqlite_backend(tiny_models: Path, tmp_path: Path) -> Backend:
    """A migrated SQLite database of the test's own (training touches no broker)."""
    from db import upgrade

    url = f"sqlite:///{tmp_path / 'textq.db'}"
    upgrade(url)
    return Backend("sqlite", url, "redis://127.0.0.1:1/0")


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture()
def versions(sqlite_backend: Backend, store: Path) -> ModelVersions:
    return model_versions(sqlite_backend, store)


def _lines(*records: object) -> list[object]:
    return list(records)


GOOD = subset("train", 3)

BAD_DATA = {
    "one class": (_lines({"text": "refund me", "label": "refund"}, {"text": "money back", "label": "refund"}),
                  "one class only (refund)"),
    "empty text": (_lines(*GOOD, {"text": "   ", "label": "refund"}), f"line {len(GOOD) + 1}: text is empty"),
    "missing label": (_lines(*GOOD, {"text": "where is it"}), "missing field(s) label"),
    "label not a string": (_lines(*GOOD, {"text": "where is it", "label": 3}), "label must be a string, got int 3"),
    "not an object": (_lines(*GOOD, ["where is it", "shipping"]), "expected an object with text and label, got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_training_data_is_refused_before_training(case: str, versions: ModelVersions, tmp_path: Path) -> None:
    from worker.finetune import finetune
    from worker.labelled_data import TrainingDataError, load_examples

    records, message = BAD_DATA[case]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(TrainingDataError, match="^.*" + _escaped(message)):
        finetune("support", load_examples(path), versions=versions)
    assert versions.list() == [] and version_dirs(versions.store_dir) == []


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_csv_without_a_label_column_names_the_columns(tmp_path: Path) -> None:
    from worker.labelled_data import TrainingDataError, load_examples

    path = tmp_path / "data.csv"
    path.write_text("text,intent\nwhere is my parcel,shipping\n")
    with pytest.raises(TrainingDataError, match=r"missing column\(s\) label; the header has text, intent"):
        load_examples(path)


def test_csv_data_loads(tmp_path: Path) -> None:
    from worker.labelled_data import Example, load_examples

    path = tmp_path / "data.csv"
    path.write_text('text,label\n"Where is my parcel, it is late",shipping\nrefund me please,refund\n')
    assert load_examples(path) == [Example("Where is my parcel, it is late", "shipping"), Example("refund me please", "refund")]


def test_eval_labels_unseen_in_training_are_refused(versions: ModelVersions) -> None:
    from worker.finetune import finetune
    from worker.labelled_data import Example, TrainingDataError

    train = [Example(e["text"], e["label"]) for e in GOOD if e["label"] != "refund"]
    validation = [Example("I want my money back", "refund"), Example("cancel it", "cancellation")]
    with pytest.raises(TrainingDataError, match="--eval has labels the training data does not: refund"):
        finetune("support", train, validation=validation, versions=versions)
    assert versions.list() == []


@pytest.mark.parametrize(("base", "message"), [
    ("tiny-seq2seq", "t5 (T5ForConditionalGeneration) is not an encoder"),
    ("no-such-model", "cannot load a model configuration"),
])
def test_a_base_that_is_not_an_encoder_is_refused(base: str, message: str, versions: ModelVersions) -> None:
    from producer.finetune_options import FinetuneOptions
    from worker.finetune import BaseModelError, finetune
    from worker.labelled_data import Example

    with pytest.raises(BaseModelError, match=_escaped(message)):
        finetune("support", [Example(e["text"], e["label"]) for e in GOOD], versions=versions,
                 options=FinetuneOptions(base=str(TEST_ROOT / base)))
    assert versions.list() == [] and version_dirs(versions.store_dir) == []


def test_a_run_registers_a_version_and_deploys_only_when_asked(versions: ModelVersions) -> None:
    first = quick_finetune(versions, "support")
    assert (first.label, first.active) == ("support@1", False)
    assert sorted(first.labels) == ["account_access", "billing", "bug_report", "cancellation", "refund", "shipping"]
    assert first.data_hash.startswith("sha256:") and first.training_seconds > 0
    assert set(first.metrics) >= {"accuracy", "macro_f1", "per_class", "data", "options"}
    assert (versions.directory(first) / "textq-version.json").is_file()
    assert (versions.directory(first) / "config.json").is_file()

    second = quick_finetune(versions, "support", deploy=True)
    assert (second.label, second.active) == ("support@2", True)
    assert versions.active("support") == versions.get("support@2")
    assert [p.name for p in version_dirs(versions.store_dir)] == ["1", "2"]  # no scratch left


def test_a_label_set_other_than_the_active_versions_needs_new_labels(versions: ModelVersions) -> None:
    from worker.labelled_data import TrainingDataError

    quick_finetune(versions, "support", deploy=True)
    with pytest.raises(TrainingDataError, match=r"differ from the active version support@1's \(new: none; missing: "):
        quick_finetune(versions, "support", exclude="refund")
    assert [v.label for v in versions.list()] == ["support@1"]
    renamed = quick_finetune(versions, "support", exclude="refund", new_labels=True)
    assert "refund" not in renamed.labels and not renamed.active


def test_deploy_activates_a_new_version_only_if_it_is_not_worse(versions: ModelVersions) -> None:
    from producer.finetune_options import FinetuneOptions
    from worker.finetune import deploy_decision

    active = quick_finetune(versions, "support", deploy=True)
    better, worse = {"macro_f1": 0.9}, {"macro_f1": 0.5}
    assert deploy_decision(FinetuneOptions(deploy=True), better, active, worse)[0]
    assert deploy_decision(FinetuneOptions(deploy=True), better, active, better)[0]  # as good: deployed
    deploy, why = deploy_decision(FinetuneOptions(deploy=True), worse, active, better)
    assert not deploy and why == "not deployed: validation macro-F1 0.500 < 0.900 of support@1 (--force deploys anyway)"
    assert deploy_decision(FinetuneOptions(deploy=True, force=True), worse, active, better)[0]
    assert not deploy_decision(FinetuneOptions(), better, active, worse)[0]
    assert deploy_decision(FinetuneOptions(deploy=True), worse, None, None)[0]  # the first version


def test_an_interrupted_run_registers_nothing_and_leaves_no_files(sqlite_backend: Backend, tmp_path: Path) -> None:
    store = tmp_path / "models"
    data = write_jsonl(tmp_path / "train.jsonl", subset("train", 6))
    env = {**sqlite_backend.env, "TEXTQ_MODEL_STORE": str(store)}
    args = ["finetune", "interrupted", "--data", str(data), "--base", str(TEST_ROOT / "tiny-classifier"),
            "--epochs", "500", "--max-length", "32", "--patience", "500"]
    # SIGINT at its default in the child: a shell starts background jobs (a CI run in the background,
    # say) with SIGINT ignored, and the child would inherit that and train to the end.
    with subprocess.Popen([*TEXTQ, *args], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        # A first checkpoint means the Trainer is well into its epochs.
        wait_until(lambda: any(store.glob(".partial-*/checkpoints/checkpoint-*")), timeout=120, what="training to start")
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0, output
    assert "Traceback" not in output
    assert version_dirs(store) == []
    assert model_versions(sqlite_backend, store).list("interrupted") == []


@pytest.mark.parametrize("command", ["finetune", "deploy", "delete-version", "feedback"])
def test_the_fine_tune_commands_explain_themselves(command: str) -> None:
    result = textq(command, "--help", env={})
    assert result.returncode == 0 and "Usage: " in result.stdout, result.stderr
    assert len(result.stdout.splitlines()) > 4


def test_the_cli_refuses_bad_data_without_a_traceback(sqlite_backend: Backend, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text\nwhere is my parcel\n")
    started = time.monotonic()
    result = textq("finetune", "support", "--data", str(path), env={**sqlite_backend.env, "TEXTQ_MODEL_STORE": str(tmp_path)})
    assert result.returncode == 1
    assert "missing column(s) label" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # refused before torch, let alone training, was loaded
    unknown = textq("deploy", "support@9", env=sqlite_backend.env)
    assert unknown.returncode == 1 and "no version support@9" in unknown.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TEXTQ_FULL_FINETUNE"), reason="the full run takes minutes: set TEXTQ_FULL_FINETUNE=1")
def test_full_finetune_beats_the_prototype_on_held_out_tickets(versions: ModelVersions) -> None:
    """The figures of docs/finetune.md: default options on the shipped training set."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from producer.finetune_options import FinetuneOptions
    from producer.registry import MINILM_SOURCE, ModelSpec
    from worker.finetune import evaluate, finetune
    from worker.labelled_data import data_path, load_examples
    from worker.runners.classifiers import PrototypeClassifier

    heldout = load_examples(data_path("demo:heldout"))
    version = finetune("support", load_examples(data_path("demo:train")), versions=versions,
                       options=FinetuneOptions(progress=False), echo=print).version
    directory = versions.directory(version)
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    tuned = evaluate(model, tokenizer, heldout, version.labels, FinetuneOptions())["accuracy"]
    prototype = PrototypeClassifier(ModelSpec(name="support-prototype", kind="classify", runner="prototype",
                                              source=MINILM_SOURCE, options={"examples": "support/train.jsonl"}))
    prototype.setup()
    answers = [o["label"] for o in prototype.predict([ClassifyInput(text=e.text) for e in heldout])]
    baseline = sum(a == e.label for a, e in zip(answers, heldout, strict=True)) / len(heldout)
    print(f"held-out accuracy: fine-tuned {tuned:.3f} ({version.training_seconds:.0f} s), prototype {baseline:.3f}")
    assert tuned > baseline
