"""Deterministic workloads: short review-like texts for classification, multi-sentence documents
for summarization. Same seed, same texts, so runs compare."""

from __future__ import annotations

import random

_SUBJECTS = ["The food", "The hotel room", "This phone", "The delivery", "Our waiter", "The movie", "The app",
             "The battery", "Customer support", "The concert", "This book", "The checkout page", "The train"]
_VERDICTS = ["was wonderful", "was a complete disaster", "arrived late and broken", "exceeded my expectations",
             "was fine, nothing special", "made me really happy", "is slow and keeps crashing",
             "was friendly and helpful", "felt overpriced", "worked perfectly from day one", "was noisy and dirty"]
_TAILS = ["", " and I would recommend it.", ", never again.", " overall.", " but the price was fair.",
          " and the staff apologised.", " for the third time this month.", ", five stars!"]

_TOPICS = ["the city council", "the football club", "the research team", "the central bank", "the school board",
           "the hospital", "the software company", "the museum", "the local farmers", "the airline"]
_FACTS = ["met on Tuesday to discuss {t}'s plans for next year.", "announced a budget of {n} million dollars.",
          "said the project would begin in the spring.", "faced criticism from residents about noise.",
          "reported that costs had risen by {n} percent.", "expects the work to finish by next winter.",
          "will hold a public meeting before the final vote.", "hired {n} new staff to handle the demand.",
          "published its annual report on Monday.", "warned that delays were likely.",
          "thanked volunteers for their help during the storm.", "opened a new office near the station."]


def short_texts(n: int, seed: int = 7) -> list[str]:
    """`n` one-sentence reviews, 20-90 characters."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERDICTS)}{rng.choice(_TAILS)}" for _ in range(n)]


def documents(n: int, seed: int = 7, sentences: tuple[int, int] = (6, 14)) -> list[str]:
    """`n` news-like documents of 6-14 sentences (roughly 400-1000 characters)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        topic = rng.choice(_TOPICS)
        parts = [f"{topic.capitalize()} {rng.choice(_FACTS).format(t=topic, n=rng.randint(2, 90))}"
                 for _ in range(rng.randint(*sentences))]
        docs.append(" ".join(parts))
    return docs
