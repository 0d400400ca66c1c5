"""Sentences of a text, and a summary held to the length its request allowed."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n\s*\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def within_length(summary: str, *, max_words: int | None, max_sentences: int) -> tuple[str, bool]:
    """`summary` cut to the request's limit, and whether it was cut. Small models overshoot what
    the prompt asks (docs/models.md: SmolLM2's median summary is ~0.53 of a ~70-word paragraph when
    asked for 30 words), so the limit is applied here too:
    whole sentences while they fit `max_words` (else the first `max_sentences`), and a first
    sentence longer than `max_words` alone is cut at that many words. Words are what spaces separate."""
    if max_words is None:
        sentences = split_sentences(summary)
        return (summary, False) if len(sentences) <= max_sentences else (" ".join(sentences[:max_sentences]), True)
    if len(summary.split()) <= max_words:
        return summary, False
    kept: list[str] = []
    words = 0
    for sentence in split_sentences(summary):
        count = len(sentence.split())
        if words + count > max_words:
            break
        kept.append(sentence)
        words += count
    return (" ".join(kept) if kept else " ".join(summary.split()[:max_words])), True
