"""The export cache: one directory per exported model, keyed by a hash of the weights and the backend.

An entry is built in a temporary directory beside it and renamed into place, so a reader only ever
sees complete entries, and two workers exporting at once both end with the same, whole entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
# Bump when the export itself changes (exporter options, graph layout): old entries are then unused.
EXPORT_FORMAT = 1
# Files whose bytes decide what an export contains: the weights and the architecture.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_FILES = ("config.json",)
# A temporary directory this old was left by a crashed export; a live export takes minutes at most.
STALE_TEMP_S = 24 * 3600


def weights_digest(model_dir: Path) -> dict[str, str]:
    """sha256 of every weights file and the config in `model_dir`, by relative path."""
    files = sorted(p for p in model_dir.rglob("*")
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_FILES))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"no weights file ({', '.join(WEIGHT_SUFFIXES)}) in {model_dir}")
    digests = {}
    for path in files:
        with path.open("rb") as f:
            digests[str(path.relative_to(model_dir))] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def cache_key(backend: str, parts: Mapping[str, object]) -> str:
    """The entry name: readable backend, then a hash of everything the exported file depends on."""
    payload = json.dumps({"format": EXPORT_FORMAT, "backend": backend, **parts}, sort_keys=True)
    return f"{backend}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def local_model_dir(source: str) -> Path:
    """A directory holding the weights: `source` itself, or the hub snapshot of a hub id."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


class OnnxCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_settings(cls) -> OnnxCache:
        return cls(WorkerSettings().onnx_cache)

    def ensure(self, key: str, build: Callable[[Path], None]) -> Path:
        """The entry's model file; `build(directory)` writes `MODEL_FILE` into a fresh directory only
        when the entry does not exist yet."""
        entry = self.root / key
        if (entry / MODEL_FILE).is_file():
            return entry / MODEL_FILE
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        building = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            build(building)
            if not (building / MODEL_FILE).is_file():
                raise RuntimeError(f"building cache entry {key} wrote no {MODEL_FILE}")
            meta = {"key": key, "created_at": datetime.now(UTC).isoformat(), "pid": os.getpid()}
            (building / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            building.chmod(0o755)  # mkdtemp makes it private; workers of other users may share the cache
            try:
                os.rename(building, entry)  # atomic; fails if another process renamed its entry first
            except OSError:
                if not (entry / MODEL_FILE).is_file():
                    raise
                log.info("cache entry %s was built by another process at the same time; using theirs", key)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return entry / MODEL_FILE

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for path in self.root.glob(".*"):
            try:
                if path.is_dir() and now - path.stat().st_mtime > STALE_TEMP_S:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:  # another process removed it first
                pass


__all__ = ["MODEL_FILE", "OnnxCache", "cache_key", "local_model_dir", "weights_digest"]
