"""Content hashes of model weights: the `model_version` a job records when its model has no registry version."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf")
HASH_CHARS = 16


def local_weights_dir(source: str) -> Path | None:
    """The directory holding `source`'s files on this machine: the directory itself, or a hub id's
    cached snapshot; None when neither is here."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not a hub id, or not in the local cache: there is nothing to hash
        return None


@lru_cache(maxsize=32)
def weights_hash(directory: Path) -> str | None:
    """`sha256:<16 hex>` over the weight files under `directory` (names and contents), None if it has none."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(directory)).encode())
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"sha256:{digest.hexdigest()[:HASH_CHARS]}"


__all__ = ["local_weights_dir", "weights_hash"]
