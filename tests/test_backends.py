"""Runtime backends (docs/backends.md): ONNX outputs agree with torch, the export cache, and errors at start.

The MiniLM runners export once per test session into a temporary cache; the cache tests use the
tiny random classifier (tests/services.py), which exports in seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from bench.backends import VARIANTS
from producer.contract import ClassifyInput, SummarizeInput
from producer.registry import ModelSpec, default_registry
from producer.worker_process import WorkerProcess
from tests.conftest import TEST_ROOT, new_backend
from tests.test_quality import ARTICLES, SENTIMENT, TOPICS, ZERO_SHOT
from worker.runners import Runner, create_runner
from worker.runners import backends as backends_module
from worker.runners.backends import BackendError, quantize_int8
from worker.runners.base import cpu_has_native_bf16, pick_dtype

REPO = Path(__file__).resolve().parent.parent
SENTIMENT_EXAMPLES = REPO / "worker" / "data" / "sentiment.json"
TINY_TEXTS = ["abc", "hello there, a longer one!", "0123 4567 89"]


@pytest.fixture(scope="module", autouse=True)
def onnx_cache() -> Iterator[Path]:
    """One export per test module: every load here reads this cache."""
    with pytest.MonkeyPatch.context() as patch:
        path = TEST_ROOT / "onnx-cache"
        patch.setenv("TEXTQ_ONNX_CACHE", str(path))
        yield path


needs_native_bf16 = pytest.mark.skipif(not cpu_has_native_bf16() and not torch.cuda.is_available(),
                                       reason="bfloat16 runs as float32 on a CPU without AVX512-BF16 or AMX")


@pytest.fixture(scope="module")
def minilm() -> Callable[[str, str], Runner]:
    """Set-up runners of the built-in models by (model, variant of VARIANTS), loaded once each."""
    loaded: dict[tuple[str, str], Runner] = {}

    def get(model: str, variant: str) -> Runner:
        if (model, variant) not in loaded:
            runner = create_runner(default_registry().get(model).model_copy(update=VARIANTS[variant]))
            runner.setup()
            loaded[model, variant] = runner
        return loaded[model, variant]

    return get


def _classification_sets() -> dict[str, tuple[str, list[tuple[str, str]], list[str] | None]]:
    examples: dict[str, list[str]] = json.loads(SENTIMENT_EXAMPLES.read_text())
    labelled = SENTIMENT + [(text, label) for label, texts in examples.items() for text in texts]
    return {"sentiment": ("sentiment", labelled, None), "zero-shot": ("zero-shot", ZERO_SHOT, TOPICS)}


@dataclass
class Agreement:
    agree: int = 0
    total: int = 0
    # (backend - torch) accuracy against the gold labels, per classification set
    accuracy_change: dict[str, float] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.agree / self.total


def _agreement(backend: str, minilm: Callable[[str, str], Runner]) -> Agreement:
    """Labels (classification) and picked sentences (summaries) of `backend` against torch's."""
    found = Agreement()
    for name, (model, labelled, labels) in _classification_sets().items():
        inputs = [ClassifyInput(text=text, labels=labels) for text, _ in labelled]
        reference = [o["label"] for o in minilm(model, "torch").predict(inputs)]
        predicted = [o["label"] for o in minilm(model, backend).predict(inputs)]
        gold = [label for _, label in labelled]
        accuracy = {k: sum(p == g for p, g in zip(v, gold, strict=True)) / len(gold)
                    for k, v in (("torch", reference), (backend, predicted))}
        same = sum(a == b for a, b in zip(predicted, reference, strict=True))
        print(f"\n{name} on {backend}: {same}/{len(inputs)} labels agree with torch; "
              f"accuracy {accuracy[backend]:.1%} vs torch {accuracy['torch']:.1%}")
        found.accuracy_change[name] = accuracy[backend] - accuracy["torch"]
        found.agree, found.total = found.agree + same, found.total + len(inputs)
    summary_inputs = [SummarizeInput(text=a, max_sentences=2) for a in ARTICLES]
    reference_picks = [o["sentences"] for o in minilm("summarize", "torch").predict(summary_inputs)]
    picks = [o["sentences"] for o in minilm("summarize", backend).predict(summary_inputs)]
    print(f"summarize on {backend}: picks {picks}, torch {reference_picks}")
    found.agree += sum(p == r for p, r in zip(picks, reference_picks, strict=True))
    found.total += len(ARTICLES)
    print(f"{backend}: {found.agree}/{found.total} = {found.share:.1%} agreement with torch")
    return found


@pytest.mark.parametrize("backend", [
    "onnx",
    # Measured: the same sentence flips in bfloat16 (torch fp32 calls it negative at 0.503 to 0.497):
    # 71/72; on the 1,000 corpus texts of bench.backends 99.7% agree.
    pytest.param("torch-bf16", marks=[needs_native_bf16, pytest.mark.xfail(
        reason="bf16 agrees on 98.6% of labels (< 99%): one near-tie flips", strict=False)]),
    # Measured: one sentiment sentence of 60 flips (towards the gold label) with every int8 setting
    # tried, so 71/72 = 98.6% agreement and +1.7 points of accuracy: outside the bar for a default.
    pytest.param("onnx-int8", marks=pytest.mark.xfail(reason="int8 agrees on 98.6% of labels (< 99%)", strict=False)),
])
def test_backend_meets_the_bar_for_a_default(backend: str, minilm: Callable[[str, str], Runner]) -> None:
    """The bar a backend must pass to become a built-in model's default: ≥ 99% of labels agree with
    torch, accuracy within 1 point (docs/backends.md)."""
    found = _agreement(backend, minilm)
    assert found.share >= 0.99
    assert all(abs(change) <= 0.01 for change in found.accuracy_change.values()), found.accuracy_change


@pytest.mark.parametrize("backend", ["onnx-int8", pytest.param("torch-bf16", marks=needs_native_bf16)])
def test_opt_in_variants_are_close_to_torch_and_no_less_accurate(backend: str,
                                                                 minilm: Callable[[str, str], Runner]) -> None:
    found = _agreement(backend, minilm)
    assert found.share >= 0.95
    assert all(change >= -0.01 for change in found.accuracy_change.values()), found.accuracy_change


def test_onnx_embeddings_match_torch(minilm: Callable[[str, str], Runner]) -> None:
    texts = [text for text, _ in SENTIMENT]
    reference = minilm("sentiment", "torch").embed(texts)  # type: ignore[attr-defined]
    exported = minilm("sentiment", "onnx").embed(texts)  # type: ignore[attr-defined]
    assert (reference * exported).sum(1).min() > 0.9999  # cosine similarity, row by row


@needs_native_bf16
def test_bf16_runs_in_bf16_and_its_embeddings_match_float32(minilm: Callable[[str, str], Runner]) -> None:
    texts = [text for text, _ in SENTIMENT]
    bf16 = minilm("sentiment", "torch-bf16")
    assert bf16.dtype == torch.bfloat16
    vectors = bf16.embed(texts)  # type: ignore[attr-defined]
    assert vectors.dtype == torch.float32  # pooled and normalised in float32
    assert (minilm("sentiment", "torch").embed(texts) * vectors).sum(1).min() > 0.999  # type: ignore[attr-defined]


# -- the export cache (tiny classifier) ------------------------------------------------------------
def _tiny_spec(source: Path, backend: str) -> ModelSpec:
    return ModelSpec(name="tiny", kind="classify", runner="hf_classifier", source=str(source), backend=backend)


def _scores(source: Path, backend: str) -> list[float]:
    """Every label's score for each of TINY_TEXTS, flat."""
    runner = create_runner(_tiny_spec(source, backend))
    runner.setup()
    return [s["score"] for o in runner.predict([ClassifyInput(text=t) for t in TINY_TEXTS])
            for s in sorted(o["scores"], key=lambda s: s["label"])]


def _entries(cache: Path) -> dict[str, int]:
    """Entry name → mtime of its model file; temporary (hidden) build directories included."""
    return {p.name: (p / "model.onnx").stat().st_mtime_ns if (p / "model.onnx").exists() else -1
            for p in cache.iterdir()} if cache.exists() else {}


@pytest.fixture()
def tiny_copy(tiny_models: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_models / "tiny-classifier", tmp_path / "tiny-classifier"))


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTQ_ONNX_CACHE", str(cache))
    return cache


@pytest.fixture()
def export_count(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories export_onnx wrote into, in this process."""
    calls: list[Path] = []
    original = backends_module.export_onnx

    def counting(model_dir: Path, target: Path, **kwargs: Any) -> None:
        calls.append(target)
        original(model_dir, target, **kwargs)

    monkeypatch.setattr(backends_module, "export_onnx", counting)
    return calls


def test_a_second_load_reads_the_cache_without_exporting(tiny_copy: Path, fresh_cache: Path,
                                                          export_count: list[Path]) -> None:
    first = _scores(tiny_copy, "onnx")
    entries = _entries(fresh_cache)
    assert len(export_count) == 1 and len(entries) == 1 and next(iter(entries)).startswith("onnx-")
    again = _scores(tiny_copy, "onnx")
    assert len(export_count) == 1, "the second load exported again"
    assert _entries(fresh_cache) == entries  # same entry, model file untouched
    assert again == first == pytest.approx(_scores(tiny_copy, "torch"), abs=1e-4)


def test_new_weights_or_another_backend_make_a_new_entry(tiny_copy: Path, fresh_cache: Path,
                                                         export_count: list[Path]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    _scores(tiny_copy, "onnx")
    int8 = _scores(tiny_copy, "onnx-int8")
    after_int8 = _entries(fresh_cache)
    assert sorted(n.rsplit("-", 1)[0] for n in after_int8) == ["onnx", "onnx-int8"]
    assert len(export_count) == 1  # int8 quantizes the cached fp32 export
    assert int8 == pytest.approx(_scores(tiny_copy, "torch"), abs=0.05)

    model = AutoModelForSequenceClassification.from_pretrained(tiny_copy)
    with torch.no_grad():
        model.classifier.bias += torch.tensor([2.0, 0.0, -2.0])
    model.save_pretrained(tiny_copy)
    changed = _scores(tiny_copy, "onnx")
    assert len(export_count) == 2
    assert len(_entries(fresh_cache)) == 3 and set(after_int8) < set(_entries(fresh_cache))
    assert changed == pytest.approx(_scores(tiny_copy, "torch"), abs=1e-4)  # the new weights, not the cached ones


# Waits for the other process at two points: before loading, and inside the export (so both export).
_CONCURRENT_LOAD = """
import json, sys, time
from pathlib import Path
from producer.contract import ClassifyInput
from producer.registry import ModelSpec
from worker.runners import backends, create_runner
import worker.runners.huggingface

me, other, source = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
exports = []
original = backends.export_onnx

def meet(step):
    (me.parent / f"{me.name}-{step}").touch()
    deadline = time.monotonic() + 120
    while not (other.parent / f"{other.name}-{step}").exists():
        assert time.monotonic() < deadline, f"the other process never reached {step}"
        time.sleep(0.01)

def exporting(*args, **kwargs):
    exports.append(1)
    meet("exporting")
    original(*args, **kwargs)

backends.export_onnx = exporting
meet("ready")
runner = create_runner(ModelSpec(name="tiny", kind="classify", runner="hf_classifier", source=source, backend="onnx"))
runner.setup()
print(json.dumps({"exports": len(exports), "outputs": runner.predict([ClassifyInput(text="abc")])}))
"""


def test_two_processes_loading_at_once_leave_one_whole_entry(tiny_copy: Path, fresh_cache: Path, tmp_path: Path,
                                                             export_count: list[Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TEXTQ_ONNX_CACHE": str(fresh_cache)}
    marks = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_LOAD, str(me), str(other), str(tiny_copy)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (marks, marks[::-1])]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["exports"] for r in results] == [1, 1]  # both exported at the same time
    assert results[0]["outputs"] == results[1]["outputs"]
    entries = _entries(fresh_cache)
    assert len(entries) == 1 and not any(n.startswith(".") for n in entries), entries  # no torn or leftover build
    assert _scores(tiny_copy, "onnx") == pytest.approx(_scores(tiny_copy, "torch"), abs=1e-4)
    assert export_count == []  # this process loaded their entry


# -- errors at start ----------------------------------------------------------------------------------
def test_a_damaged_entry_is_refused_at_start_and_deleting_it_exports_again(tiny_copy: Path, fresh_cache: Path,
                                                                          export_count: list[Path]) -> None:
    """An entry is renamed into place whole, but a disk or a copied volume can damage it later: the
    runner then refuses to start, naming the directory whose removal fixes it."""
    import shutil

    expected = _scores(tiny_copy, "onnx")
    [entry] = [p for p in fresh_cache.iterdir() if not p.name.startswith(".")]
    model_file = entry / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    runner = create_runner(_tiny_spec(tiny_copy, "onnx"))
    with pytest.raises(BackendError, match=rf"ONNX Runtime cannot load .*delete {re.escape(str(entry))} to export it"):
        runner.setup()
    shutil.rmtree(entry)
    assert _scores(tiny_copy, "onnx") == pytest.approx(expected, abs=1e-6)
    assert len(export_count) == 2


def test_an_unknown_backend_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpec(name="m", kind="classify", runner="prototype", backend="tensorrt")  # type: ignore[arg-type]
    assert "backend" in str(info.value) and "'torch', 'onnx' or 'onnx-int8'" in str(info.value)


def test_a_missing_runtime_package_is_named(tiny_copy: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` does when it is not installed
    runner = create_runner(_tiny_spec(tiny_copy, "onnx"))
    with pytest.raises(BackendError, match=r"needs the 'onnxruntime' package.*pip install"):
        runner.setup()
    assert not fresh_cache.exists()  # refused before exporting anything


def test_int8_refuses_a_device_it_cannot_run_on(tiny_copy: Path, fresh_cache: Path) -> None:
    runner = create_runner(_tiny_spec(tiny_copy, "onnx-int8").model_copy(update={"device": "cuda"}))
    with pytest.raises(BackendError, match=r"'onnx-int8' runs on the CPU only"):
        runner.setup()


def test_int8_refuses_a_graph_with_nothing_to_quantize(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "no-weights",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), tmp_path / "model.onnx")
    target = tmp_path / "int8"
    target.mkdir()
    with pytest.raises(BackendError, match=r"model 'relu' cannot be quantized.*use backend 'onnx'"):
        quantize_int8(tmp_path / "model.onnx", target, "relu", onnx)


def test_a_non_encoder_runner_refuses_an_onnx_backend(tiny_models: Path) -> None:
    spec = ModelSpec(name="s2s", kind="summarize", runner="hf_seq2seq", source=str(tiny_models / "tiny-seq2seq"),
                     backend="onnx")
    with pytest.raises(BackendError, match="serves encoder runners only"):
        create_runner(spec).setup()


@pytest.mark.parametrize(("backend", "error"), [
    ("tensorrt", "'torch', 'onnx' or 'onnx-int8'"),
    ("onnx", "needs the 'onnxruntime' package"),
])
def test_a_worker_with_a_bad_backend_does_not_start(backend: str, error: str, tiny_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text(json.dumps([{"name": "tiny-onnx", "kind": "classify", "runner": "hf_classifier",
                                   "source": str(tiny_models / "tiny-classifier"), "backend": backend}]))
    shadow = tmp_path / "shadow"  # an onnxruntime that fails to import, as if not installed
    shadow.mkdir()
    (shadow / "onnxruntime.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    with new_backend("sqlite", "backends") as services:
        env = {**services.env, "TEXTQ_MODELS_FILE": str(models), "TEXTQ_WORKER_MODELS": "tiny-onnx",
               "TEXTQ_ONNX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO)])}
        worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", name="bad-backend")
        with pytest.raises(RuntimeError, match="worker exited") as info:
            worker.start(timeout=120)
    assert error in str(info.value)


def test_a_cpu_computes_in_bf16_only_where_it_has_bf16_and_it_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("float16", cpu) == torch.float32  # float16 is for CUDA
    assert pick_dtype("bfloat16", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    monkeypatch.setenv("TEXTQ_CPU_BF16", "0")
    assert pick_dtype("bfloat16", cpu) == torch.float32


def test_a_runner_says_when_its_dtype_is_not_the_one_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    spec = default_registry().get("sentiment").model_copy(update={"dtype": "float16", "device": "cpu"})
    with caplog.at_level("INFO", logger="worker.runners.base"):
        assert create_runner(spec).dtype == torch.float32
    assert "model 'sentiment': dtype float16 runs as float32 on this cpu" in caplog.text
