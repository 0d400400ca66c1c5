"""A mixed-length corpus in arrival order: from a few words to ~400 tokens, long-tailed, like real
traffic, where length-sorted, token-budget batching matters. Deterministic: same seed, same texts."""

from __future__ import annotations

import math
import random

from bench.texts import documents, short_texts

# Lengths in tokens are log-normal: median ~30 tokens, 1 in 10 over ~110, a few near the cap.
MEDIAN_TOKENS = 30
SIGMA = 1.0
MIN_TOKENS, MAX_TOKENS = 3, 400
# English words per MiniLM word-piece token, to turn a token length into a word count.
WORDS_PER_TOKEN = 0.8


def token_lengths(n: int, seed: int = 11) -> list[int]:
    """`n` target lengths in tokens, long-tailed, in arrival (not sorted) order."""
    rng = random.Random(seed)
    return [min(MAX_TOKENS, max(MIN_TOKENS, round(rng.lognormvariate(math.log(MEDIAN_TOKENS), SIGMA))))
            for _ in range(n)]


def mixed_length_texts(n: int, seed: int = 11) -> list[str]:
    """`n` texts of review and news sentences, each cut to its target length in words."""
    rng = random.Random(seed)
    sentences = short_texts(200, seed=seed) + [
        s if s.endswith(".") else s + "." for doc in documents(40, seed=seed) for s in doc.split(". ")
    ]
    texts = []
    for tokens in token_lengths(n, seed):
        words: list[str] = []
        target = max(1, round(tokens * WORDS_PER_TOKEN))
        while len(words) < target:
            words += rng.choice(sentences).split()
        texts.append(" ".join(words[:target]))
    return texts


__all__ = ["mixed_length_texts", "token_lengths"]
