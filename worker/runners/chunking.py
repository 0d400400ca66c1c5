"""Long inputs said out loud: texts split into token windows with overlap, and groups bounded by a token budget.

A text longer than a model's window is split, never silently cut; only a request's `truncate=true`
keeps the first window alone. Every output says how many chunks it used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

T = TypeVar("T")


class _Sliceable(Protocol):
    def __getitem__(self, index: slice, /) -> Self: ...


S = TypeVar("S", bound=_Sliceable)


@dataclass(frozen=True, slots=True)
class Chunks:
    """A text's pieces, each at most `window` tokens; `truncated` when only the first was kept."""

    texts: list[str]
    truncated: bool = False

    def describe(self) -> dict[str, Any]:
        return {"chunks": len(self.texts), "truncated": self.truncated}


def token_windows(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token ranges covering `n_tokens`, each at most `window` long, consecutive ones sharing `overlap`."""
    if window < 1:
        raise ValueError(f"window must be at least 1 token, not {window}")
    overlap = max(0, min(overlap, window // 2))
    if n_tokens <= window:
        return [(0, n_tokens)]
    step = window - overlap
    ranges = []
    start = 0
    while True:
        end = min(start + window, n_tokens)
        ranges.append((start, end))
        if end == n_tokens:
            return ranges
        start += step


def split_by_tokens(tokenizer: Any, text: str, window: int, overlap: int, *, truncate: bool = False) -> Chunks:
    """`text` cut at token boundaries into pieces of at most `window` tokens (the text's own characters,
    sliced by the fast tokenizer's offsets, so nothing is re-spelled by decoding)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ranges = token_windows(len(offsets), window, overlap)
    if len(ranges) == 1:
        return Chunks([text])
    if truncate:
        ranges = ranges[:1]
    pieces = []
    for index, (start, end) in enumerate(ranges):
        begin = 0 if index == 0 else offsets[start][0]
        finish = len(text) if end == len(offsets) else offsets[end - 1][1]
        pieces.append(text[begin:finish])
    return Chunks(pieces, truncated=truncate)


def token_bounded(sizes: Sequence[int], *, max_tokens: int, max_items: int) -> list[list[int]]:
    """Indices of `sizes` grouped in ascending size order so that count x largest <= max_tokens and
    count <= max_items (a padded batch's cost); an item over the budget alone still gets a group."""
    groups: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        if current and (sizes[index] * (len(current) + 1) > max_tokens or len(current) >= max_items):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def pack_consecutive(items: Sequence[T], fits: Callable[[list[T]], bool]) -> list[list[T]]:
    """`items` in order, packed into as few consecutive groups as `fits` allows (an item that does not
    fit even alone still gets a group of its own)."""
    groups: list[list[T]] = []
    for item in items:
        if groups and fits([*groups[-1], item]):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def reduce_groups(parts: Sequence[T], fits: Callable[[list[T]], bool]) -> list[list[T]]:
    """The groups of one reduce step of a map-reduce: consecutive partial results packed as `fits` allows.
    Each step must shrink the list, or the reduction would never end: when no two parts fit together,
    they go in pairs (each pair is then read cut at the model's window)."""
    groups = pack_consecutive(parts, fits)
    if len(groups) == len(parts) > 1:
        groups = [list(parts[i : i + 2]) for i in range(0, len(parts), 2)]
    return groups


def in_runs(flat: S, sizes: Sequence[int]) -> list[S]:
    """`flat` (a list, a tensor) cut into consecutive runs of `sizes` items: each input's share of what a
    batch computed flat over every input's chunks, sentences or texts."""
    runs: list[S] = []
    start = 0
    for size in sizes:
        runs.append(flat[start : start + size])
        start += size
    return runs


__all__ = ["Chunks", "in_runs", "pack_consecutive", "reduce_groups", "split_by_tokens", "token_bounded",
           "token_windows"]
