"""Runtime backends for encoder models: the forward pass on tokenized inputs, in PyTorch or ONNX Runtime.

A runner tokenizes, calls a `Forward`, and post-processes (pooling, softmax) the same way whatever the
backend. `onnx` and `onnx-int8` export the model once into a cache (docs/backends.md) and load the
exported file on later starts.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch

from producer.registry import ModelSpec
from worker.runners.onnx_cache import OnnxCache, cache_key, local_model_dir, weights_digest

log = logging.getLogger(__name__)

# The packages each ONNX backend needs, with what each is for (named in the error if one is missing).
ONNX_PACKAGES = {"onnxruntime": "runs the model", "onnx": "reads and quantizes the graph",
                 "onnxscript": "torch.onnx.export's exporter"}
# Node types that only a dynamically quantized graph has: at least one proves quantization did something.
INT8_OPS = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear"})
# Per-channel 7-bit weights: the closest labels to fp32 of the settings tried on MiniLM (docs/backends.md).
INT8_OPTIONS: dict[str, Any] = {"per_channel": True, "reduce_range": True}


class BackendError(RuntimeError):
    """A model cannot run on the backend its spec asks for. Raised by `setup`, so the worker does not start."""


class Forward(Protocol):
    """A model's forward pass: tokenized inputs (on `device`) → the named output tensor."""

    device: torch.device

    def __call__(self, encoded: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


class TorchForward:
    def __init__(self, model: Any, output: str) -> None:
        self.model = model
        self.output = output
        self.device: torch.device = model.device

    def __call__(self, encoded: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            result: torch.Tensor = getattr(self.model(**encoded), self.output)
        return result


class OnnxForward:
    """An ONNX Runtime session; inputs are fed by the names the exported graph declares."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        # Tokenized inputs stay on the CPU: ONNX Runtime takes numpy arrays and copies them itself.
        self.device = torch.device("cpu")

    def __call__(self, encoded: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: encoded[name].numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def load_forward(spec: ModelSpec, source: str, *, auto_class: Any, output: str,
                 device: torch.device, dtype: torch.dtype, input_names: list[str]) -> Forward:
    """The forward pass of `source` on `spec.backend`; ONNX backends export on the first load only."""
    if spec.backend == "torch":
        return TorchForward(auto_class.from_pretrained(source, dtype=dtype).to(device).eval(), output)
    if spec.backend == "onnx-int8" and device.type != "cpu":
        raise BackendError(f"model {spec.name!r}: backend 'onnx-int8' runs on the CPU only (ONNX Runtime has no "
                           f"CUDA kernels for dynamic int8 quantization); use backend 'onnx' or device 'cpu'")
    modules = {name: require(name, spec.backend) for name in ONNX_PACKAGES}
    model_dir = local_model_dir(source)
    cache = OnnxCache.from_settings()
    exported = _ensure_onnx(cache, model_dir, auto_class=auto_class, output=output, input_names=input_names)
    path = exported if spec.backend == "onnx" else _ensure_int8(cache, exported, spec, modules["onnx"])
    return OnnxForward(_session(modules["onnxruntime"], path, device, spec.name))


def require(module: str, backend: str) -> ModuleType:
    """Import a runtime package, or say which one to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(
            f"backend {backend!r} needs the {module!r} package ({ONNX_PACKAGES.get(module, 'runtime')}), which is "
            f"not installed: pip install 'textq[worker]' (or pip install {module})"
        ) from exc


def _ensure_onnx(cache: OnnxCache, model_dir: Path, *, auto_class: Any, output: str, input_names: list[str]) -> Path:
    key = cache_key("onnx", {"weights": weights_digest(model_dir), "class": auto_class.__name__,
                             "output": output, "inputs": input_names})
    return cache.ensure(key, lambda target: export_onnx(model_dir, target, auto_class=auto_class, output=output,
                                                        input_names=input_names))


def _ensure_int8(cache: OnnxCache, fp32: Path, spec: ModelSpec, onnx: ModuleType) -> Path:
    # Keyed by the fp32 entry, itself keyed by the weights: new weights give a new int8 entry too.
    key = cache_key("onnx-int8", {"from": fp32.parent.name, "options": INT8_OPTIONS})
    return cache.ensure(key, lambda target: quantize_int8(fp32, target, spec.name, onnx))


class _NamedOutput(torch.nn.Module):
    """Positional inputs → one named output tensor: the shape torch.onnx.export wants."""

    def __init__(self, model: Any, input_names: list[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output = output

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = getattr(self.model(**dict(zip(self.input_names, inputs, strict=True))), self.output)
        return result


def export_onnx(model_dir: Path, target: Path, *, auto_class: Any, output: str, input_names: list[str]) -> None:
    """Export the fp32 model with dynamic batch and sequence axes into `target` (a directory)."""
    from transformers import AutoTokenizer

    log.info("exporting %s to ONNX (once; later starts load the cached file)", model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = auto_class.from_pretrained(model_dir, dtype=torch.float32).eval()
    example = tokenizer(["a short example", "a somewhat longer example sentence to pad against"],
                        padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # The dynamo exporter: the TorchScript one bakes transformers' attention-mask branches in for
    # the example's shapes, and its outputs were wrong on other paddings.
    torch.onnx.export(
        _NamedOutput(model, input_names, output), tuple(example[n] for n in input_names), str(target / "model.onnx"),
        input_names=input_names, output_names=[output], dynamo=True, external_data=False, verbose=False,
        dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in input_names),),
    )


def quantize_int8(fp32: Path, target: Path, model_name: str, onnx: ModuleType) -> None:
    """Dynamic int8 quantization of the weights (activations quantized at run time), or BackendError."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = target / "model.onnx"
    try:
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, **INT8_OPTIONS)
    except Exception as exc:
        raise BackendError(f"model {model_name!r} cannot be quantized for backend 'onnx-int8': {exc!r}; "
                           f"use backend 'onnx'") from exc
    if not any(node.op_type in INT8_OPS for node in onnx.load(str(out), load_external_data=False).graph.node):
        raise BackendError(f"model {model_name!r} cannot be quantized for backend 'onnx-int8': its graph has no "
                           f"weight matrix that dynamic int8 quantization covers; use backend 'onnx'")


def _session(ort: ModuleType, path: Path, device: torch.device, model_name: str) -> Any:
    options = ort.SessionOptions()
    # Like the torch path (worker/batcher.py sets torch's threads in this thread before setup):
    # intra-op parallelism gets the cores, inter-op stays at 1.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("model %s: ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); running on CPU",
                        model_name)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:
        raise BackendError(f"model {model_name!r}: ONNX Runtime cannot load {path}: {exc}; delete "
                           f"{path.parent} to export it again") from exc


__all__ = ["BackendError", "Forward", "OnnxForward", "TorchForward", "load_forward", "require"]
