"""Long documents through the seq2seq and extractive summarizers: map-reduced over chunks, never cut.

In-process on tiny models built from a config (tests/services.py) with small windows, so that a short
text already spans many chunks; `truncate=true` keeps the first window, as before chunking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from producer.contract import SummarizeInput
from producer.registry import ModelSpec
from worker.runners import create_runner
from worker.runners.extractive import ExtractiveSummarizer, choose_sentences, map_reduce_sentences, split_sentences
from worker.runners.huggingface import Seq2SeqSummarizer

WINDOW = 24
# Forty sentences of four or five one-token words each: about ten chunks of WINDOW tokens.
DOCUMENT = " ".join(f"abc def {'ghi jkl' if i % 3 else 'mno'} {i}." for i in range(40))


@pytest.fixture(scope="module")
def seq2seq(tiny_models: Path) -> Seq2SeqSummarizer:
    runner = create_runner(ModelSpec(name="s2s", kind="summarize", runner="hf_seq2seq", max_batch_size=4,
                                     source=str(tiny_models / "tiny-seq2seq"), max_input_tokens=WINDOW,
                                     options={"max_new_tokens": 4, "chunk_overlap_tokens": 4}))
    assert isinstance(runner, Seq2SeqSummarizer)
    runner.setup()
    return runner


@pytest.fixture(scope="module")
def extractive(tiny_models: Path) -> ExtractiveSummarizer:
    runner = create_runner(ModelSpec(name="ext", kind="summarize", runner="extractive",
                                     source=str(tiny_models / "tiny-classifier"), max_input_tokens=WINDOW))
    assert isinstance(runner, ExtractiveSummarizer)
    runner.setup()
    return runner


def _recording_generate(runner: Seq2SeqSummarizer) -> list[int]:
    """Rows per `generate` call of the runner's model (the transformers model, wrapped to count, not replaced)."""
    rows: list[int] = []
    generate = runner.model.generate

    def counting(**kwargs: Any) -> Any:
        rows.append(int(kwargs["input_ids"].shape[0]))
        return generate(**kwargs)

    runner.model.generate = counting
    return rows


def test_a_long_seq2seq_summary_is_map_reduced_and_says_how_many_chunks(seq2seq: Seq2SeqSummarizer) -> None:
    rows = _recording_generate(seq2seq)
    try:
        long, cut, short = seq2seq.predict([SummarizeInput(text=DOCUMENT), SummarizeInput(text=DOCUMENT, truncate=True),
                                            SummarizeInput(text="abc def.")])
    finally:
        del seq2seq.model.generate
    assert long["chunks"] > 4 and not long["truncated"] and isinstance(long["summary"], str)
    assert (cut["chunks"], cut["truncated"]) == (1, True)
    assert (short["chunks"], short["truncated"]) == (1, False)
    # Every chunk of every job summarized (in batches of at most max_batch_size), then the long
    # document's summaries again, in one or more reduce steps.
    first_stage = long["chunks"] + 2
    assert all(r <= 4 for r in rows) and sum(rows) > first_stage


def test_seq2seq_reduce_groups_fit_the_window(seq2seq: Seq2SeqSummarizer) -> None:
    assert seq2seq._fits(["abc def"] * 3) and not seq2seq._fits(["abc def ghi jkl"] * 10)


def test_a_long_extractive_summary_picks_per_chunk_then_among_the_picks(extractive: ExtractiveSummarizer) -> None:
    sentences = split_sentences(DOCUMENT)
    long, cut, short = extractive.predict([SummarizeInput(text=DOCUMENT, max_sentences=3),
                                           SummarizeInput(text=DOCUMENT, max_sentences=3, truncate=True),
                                           SummarizeInput(text="abc def. ghi jkl.", max_sentences=3)])
    assert long["chunks"] > 4 and not long["truncated"]
    assert len(long["sentences"]) == 3 and long["sentences"] == sorted(long["sentences"])
    assert long["summary"] == " ".join(sentences[i] for i in long["sentences"])
    assert (cut["chunks"], cut["truncated"]) == (1, True)
    _, chunks, _ = extractive._chunked_sentences(SummarizeInput(text=DOCUMENT))
    assert len(chunks) == long["chunks"] and chunks[0] == list(range(len(chunks[0])))
    assert max(cut["sentences"]) < len(chunks[0]) and cut["summary"] == " ".join(sentences[i] for i in cut["sentences"])
    assert (short["chunks"], short["truncated"], short["sentences"]) == (1, False, [0, 1])


def test_the_reduce_step_picks_against_the_whole_document() -> None:
    e1, e2, e3 = torch.eye(3)
    central = torch.nn.functional.normalize(torch.ones(3), dim=0)  # nearest the centroid of all six
    vectors = torch.stack([e1, e2, e3, e1, central, e2])
    # Each chunk's pick (its first sentence, or the central one), then the one nearest the document's centroid.
    assert map_reduce_sentences(vectors, [[0, 1], [2, 3], [4, 5]], 1) == [4]
    assert map_reduce_sentences(vectors, [[0, 1], [2, 3], [4, 5]], 2) == [0, 4]
    assert map_reduce_sentences(vectors, [[0, 1, 2, 3, 4, 5]], 1) == choose_sentences(vectors, 1) == [4]


def test_a_sentence_longer_than_the_window_is_split_not_cut(extractive: ExtractiveSummarizer) -> None:
    sentence = " ".join(f"w{i}" for i in range(3 * WINDOW)) + "."
    (out,) = extractive.predict([SummarizeInput(text=sentence, max_sentences=10)])
    assert out["chunks"] >= 3 and len(out["sentences"]) == out["chunks"]
    assert out["summary"].split() == sentence.split()  # every word of it, in order: nothing dropped
