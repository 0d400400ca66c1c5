"""Quality smoke tests of the default models on small hand-made sets (in-process runners)."""

from __future__ import annotations

import pytest

from producer.contract import ClassifyInput, SummarizeInput
from producer.registry import default_registry
from worker.runners import Runner, create_runner
from worker.runners.extractive import split_sentences

SENTIMENT = [
    ("What a fantastic day, everything was perfect!", "positive"),
    ("The service was slow and the waiter was rude.", "negative"),
    ("I absolutely love this phone.", "positive"),
    ("This was a complete waste of time.", "negative"),
    ("Terrible movie, I fell asleep halfway through.", "negative"),
    ("The pasta was delicious and fresh.", "positive"),
    ("I'm thrilled with the results.", "positive"),
    ("The package arrived damaged and late.", "negative"),
    ("Great job, team, you nailed it!", "positive"),
    ("I will never buy from this store again.", "negative"),
]

TOPICS = ["sports", "politics", "business", "science", "technology", "entertainment"]
ZERO_SHOT = [
    ("The striker scored twice in the final minutes of the match.", "sports"),
    ("Parliament passed the new budget after a heated debate.", "politics"),
    ("The central bank raised interest rates to fight inflation.", "business"),
    ("Researchers discovered a new species of frog in the rainforest.", "science"),
    ("The new smartphone features a faster chip and a better camera.", "technology"),
    ("The film won best picture at the awards ceremony.", "entertainment"),
    ("The tennis champion lost in the first round at Wimbledon.", "sports"),
    ("The president signed an executive order on immigration.", "politics"),
    ("Shares of the company fell after weak quarterly earnings.", "business"),
    ("Astronomers observed a distant galaxy with the space telescope.", "science"),
]

ARTICLES = [
    "The city council met on Tuesday to discuss the new park. Residents have asked for more green space for years. "
    "The council approved a budget of two million dollars for the project. Construction will begin in the spring. "
    "Some residents worried about noise. The mayor said the park would include a playground and a small lake.",
    "Electric cars are becoming more popular around the world. Sales doubled last year in several countries. "
    "Battery prices have fallen sharply over the past decade. Charging stations are still scarce in rural areas. "
    "Carmakers plan to release dozens of new electric models. Analysts expect the trend to continue.",
]


def _runner(name: str) -> Runner:
    runner = create_runner(default_registry().get(name))
    runner.setup()
    return runner


@pytest.fixture(scope="module")
def sentiment() -> Runner:
    return _runner("sentiment")


def test_sentiment_gets_at_least_9_of_10_obvious_sentences(sentiment: Runner) -> None:
    outputs = sentiment.predict([ClassifyInput(text=t) for t, _ in SENTIMENT])
    correct = sum(o["label"] == gold for o, (_, gold) in zip(outputs, SENTIMENT, strict=True))
    print(f"\nsentiment: {correct}/10")
    assert correct >= 9


def test_sentiment_scores_are_a_distribution_over_both_labels(sentiment: Runner) -> None:
    (out,) = sentiment.predict([ClassifyInput(text="I loved it")])
    assert out["scores"][0]["label"] == out["label"]
    assert {s["label"] for s in out["scores"]} == {"positive", "negative"}
    assert sum(s["score"] for s in out["scores"]) == pytest.approx(1, abs=1e-4)


def test_batched_and_single_predictions_agree(sentiment: Runner) -> None:
    texts = [t for t, _ in SENTIMENT]
    batched = sentiment.predict([ClassifyInput(text=t) for t in texts])
    single = [sentiment.predict([ClassifyInput(text=t)])[0] for t in texts]
    for b, s in zip(batched, single, strict=True):
        assert b["label"] == s["label"]
        assert b["score"] == pytest.approx(s["score"], abs=1e-3)


def test_zero_shot_gets_at_least_8_of_10_topics() -> None:
    outputs = _runner("zero-shot").predict([ClassifyInput(text=t, labels=TOPICS) for t, _ in ZERO_SHOT])
    correct = sum(o["label"] == gold for o, (_, gold) in zip(outputs, ZERO_SHOT, strict=True))
    print(f"\nzero-shot: {correct}/10")
    assert correct >= 8


def test_summary_sentences_come_from_the_input_and_are_fewer() -> None:
    outputs = _runner("summarize").predict([SummarizeInput(text=a, max_sentences=2) for a in ARTICLES])
    for article, out in zip(ARTICLES, outputs, strict=True):
        sentences = split_sentences(article)
        assert 0 < len(out["sentences"]) == 2 < len(sentences)
        assert out["sentences"] == sorted(out["sentences"])
        assert out["summary"] == " ".join(sentences[i] for i in out["sentences"])
        assert out["sentences"][0] == 0  # the lead sentence of a news story is central
