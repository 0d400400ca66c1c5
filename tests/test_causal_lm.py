"""The causal LM runner, chunking and the extractive QA runner, in-process on tiny models built from a config.

The tiny chat LM always writes the same few tokens, then <|im_end|> (tests/tiny_llm.py), so each
output is exact: stop and length handling, per-row limits, left padding, chunks and the time limit.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from producer.contract import AnswerInput, SummarizeInput, TranslateInput
from producer.registry import ModelSpec, load_registry
from tests.conftest import MODELS_FILE
from tests.tiny_llm import CHAIN_LENGTH, GREEDY_FILE
from worker.runners import create_runner
from worker.runners.causal_lm import CausalLM, InputTooLongError
from worker.runners.chunking import pack_consecutive, reduce_groups, split_by_tokens, token_bounded, token_windows
from worker.runners.generation import GenerationTimeLimitError, Prompt
from worker.runners.prompts import grounded_share, is_no_answer, kept_answers
from worker.runners.question_answering import ExtractiveQA
from worker.runners.sentences import within_length

LONG_TEXT = " ".join(f"Sentence number {i} says the quick brown fox jumps over the lazy dog." for i in range(120))


def _runner(name: str) -> CausalLM:
    runner = create_runner(load_registry(MODELS_FILE).get(name))
    assert isinstance(runner, CausalLM)
    runner.setup()
    return runner


@pytest.fixture(scope="module")
def greedy(tiny_models: Path) -> str:
    return (tiny_models / "tiny-llm" / GREEDY_FILE).read_text()


@pytest.fixture(scope="module")
def llm(tiny_models: Path) -> CausalLM:
    return _runner("tiny-llm")


@pytest.fixture(scope="module")
def translator(tiny_models: Path) -> CausalLM:
    return _runner("tiny-llm-translate")


def test_generation_stops_at_end_of_turn_with_counts(llm: CausalLM, greedy: str) -> None:
    (out,) = llm.predict([SummarizeInput(text="The fox jumps.", style="abstractive")])
    assert out == {
        "summary": greedy, "style": "abstractive", "trimmed": False, "finish_reason": "stop",
        "generated_tokens": CHAIN_LENGTH + 1,
        "prompt_tokens": out["prompt_tokens"], "chunks": 1, "truncated": False,
    }
    assert out["prompt_tokens"] > 20  # the chat template and the system message count too


def test_rows_of_one_batch_end_at_their_own_max_new_tokens(translator: CausalLM, greedy: str) -> None:
    short, full = translator.predict([
        TranslateInput(text="A fox.", target_language="fr", max_new_tokens=3),
        TranslateInput(text="A much longer text about a quick brown fox and a lazy dog.", target_language="de"),
    ])
    assert (short["finish_reason"], short["generated_tokens"]) == ("length", 3)
    assert greedy.startswith(short["translation"]) and len(short["translation"]) < len(greedy)
    assert (full["finish_reason"], full["translation"], full["target_language"]) == ("stop", greedy, "de")


def test_left_padding_gives_every_row_of_a_mixed_batch_the_output_it_gets_alone(llm: CausalLM, greedy: str) -> None:
    lengths = [1, 40, 200]  # very different prompt lengths: the short rows are padded
    prompts = [Prompt(ids=llm._prompt_ids([{"role": "user", "content": "fox " * n}]), max_new_tokens=10,
                      deadline=float("inf")) for n in lengths]
    batched = llm.generator.run(prompts)
    alone = [llm.generator.run([p])[0] for p in prompts]
    assert batched == alone
    assert all(not isinstance(r, Exception) and r.text == greedy for r in batched)


def test_token_budget_counts_prompt_and_max_new_tokens(llm: CausalLM) -> None:
    few = llm.estimate_tokens(TranslateInput(text="fox " * 50, target_language="fr", max_new_tokens=10))
    many = llm.estimate_tokens(TranslateInput(text="fox " * 50, target_language="fr", max_new_tokens=60))
    assert many - few == 50
    # A long text is chunked, so its estimate stops at the window plus what it generates.
    assert llm.estimate_tokens(SummarizeInput(text=LONG_TEXT)) == llm.window + 16


def test_token_bounded_groups_stay_in_budget_and_size() -> None:
    sizes = [50, 10, 400, 30, 20, 60, 5000]
    groups = token_bounded(sizes, max_tokens=120, max_items=3)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    for group in groups:
        assert len(group) <= 3
        assert len(group) == 1 or max(sizes[i] for i in group) * len(group) <= 120
    assert [6] in groups  # over the budget alone: still computed, alone


def test_token_windows_cover_the_text_with_overlap() -> None:
    assert token_windows(10, 10, 3) == [(0, 10)]
    windows = token_windows(100, 30, 5)
    assert windows[0] == (0, 30) and windows[-1][1] == 100
    assert all(b[0] == a[1] - 5 for a, b in itertools.pairwise(windows))
    assert all(end - start <= 30 for start, end in windows)


def test_split_by_tokens_keeps_every_character(llm: CausalLM) -> None:
    chunks = split_by_tokens(llm.tokenizer, LONG_TEXT, 100, 0)
    assert len(chunks.texts) > 5 and not chunks.truncated
    assert "".join(chunks.texts) == LONG_TEXT
    assert all(len(llm.tokenizer(c, add_special_tokens=False)["input_ids"]) <= 100 for c in chunks.texts)
    cut = split_by_tokens(llm.tokenizer, LONG_TEXT, 100, 0, truncate=True)
    assert (cut.texts, cut.truncated) == (chunks.texts[:1], True)


def test_long_summary_is_map_reduced_over_chunks_and_truncate_keeps_the_first(llm: CausalLM, greedy: str) -> None:
    chunked, cut = llm.predict([SummarizeInput(text=LONG_TEXT, style="abstractive"),
                                SummarizeInput(text=LONG_TEXT, style="abstractive", truncate=True)])
    assert chunked["chunks"] > 2 and not chunked["truncated"] and chunked["summary"] == greedy
    # Every chunk was summarized, then the summaries: more generations than chunks.
    assert chunked["generated_tokens"] > chunked["chunks"] * (CHAIN_LENGTH + 1)
    assert (cut["chunks"], cut["truncated"], cut["generated_tokens"]) == (1, True, CHAIN_LENGTH + 1)


def test_a_long_answer_context_is_answered_per_chunk_then_combined(tiny_models: Path, greedy: str) -> None:
    # The tiny model always answers `greedy`: a context that holds its words grounds it in every chunk.
    grounding = " ".join(f"{greedy}. Sentence number {i} says the quick brown fox jumps." for i in range(120))
    combined, single, cut, short = _runner("tiny-llm-answer").predict([
        AnswerInput(question="What jumps?", context=grounding),
        AnswerInput(question="What jumps?", context=LONG_TEXT),
        AnswerInput(question="What jumps?", context=LONG_TEXT, truncate=True),
        AnswerInput(question="What jumps?", context="The fox jumps."),
    ])
    assert isinstance(combined, dict) and combined["chunks"] > 2 and not combined["truncated"]
    # Every chunk's answer is grounded, so all are kept, and more generations combine them into one.
    assert combined["answered_in_chunks"] == list(range(combined["chunks"]))
    generations, rest = divmod(combined["generated_tokens"], CHAIN_LENGTH + 1)
    assert generations > combined["chunks"] and rest == 0
    assert (combined["answer"], combined["finish_reason"]) == (greedy, "stop")
    # Grounded nowhere: the best-grounded answer (the first of equals) alone, with no combining step.
    assert isinstance(single, dict) and single["chunks"] > 2 and single["answered_in_chunks"] == [0]
    assert (single["answer"], single["generated_tokens"]) == (greedy, single["chunks"] * (CHAIN_LENGTH + 1))
    assert isinstance(cut, dict) and (cut["chunks"], cut["truncated"], cut["answered_in_chunks"]) == (1, True, [0])
    assert isinstance(short, dict) and (short["chunks"], short["answered_in_chunks"], short["answer"]) == (1, [0], greedy)


def test_answers_kept_from_chunks_are_those_that_answer_from_their_own_chunk() -> None:
    contexts = ["The museum opened a new wing.", "The library will cost 12 million dollars.", "Rain is expected."]
    assert kept_answers(["The new library will cost $1000.", "12 million dollars", "I don't know."], contexts) == [1]
    assert kept_answers(["a new wing", "12 million dollars", "I don't know."], contexts) == [0, 1]
    assert kept_answers(["It costs 1000.", "Maybe 5 million.", "I don't know."], contexts) == [1]  # best of ungrounded
    assert kept_answers(["I don't know.", "The text does not mention it.", ""], contexts) == []
    assert grounded_share("12 million dollars", contexts[1]) == 1.0 and grounded_share("", contexts[1]) == 0.0


def test_max_new_tokens_that_leave_no_room_for_the_text_fail_alone(tiny_models: Path) -> None:
    too_long, fine = _runner("tiny-llm-answer").predict([
        AnswerInput(question="What jumps?", context="The fox jumps.", max_new_tokens=400),
        AnswerInput(question="What jumps?", context="The fox jumps."),
    ])
    assert isinstance(too_long, InputTooLongError) and "max_new_tokens=400" in str(too_long)
    assert isinstance(fine, dict) and fine["finish_reason"] == "stop"


@pytest.mark.parametrize(("reply", "says_no"), [
    ("I don't know.", True), ("I do not know the answer", True), ("i don’t know", True), ("", True),
    ("The context does not mention the price.", True), ("It is not stated in the text.", True),
    ("12 million dollars.", False), ("I know: it costs 12 million dollars.", False), ("The fox jumps.", False),
])
def test_replies_that_say_the_chunk_holds_no_answer_are_recognised(reply: str, says_no: bool) -> None:
    assert is_no_answer(reply) is says_no


def test_reduce_groups_pack_consecutive_parts_and_always_shrink() -> None:
    def fits(group: list[str]) -> bool:
        return sum(map(len, group)) <= 6

    assert reduce_groups(["ab", "cd", "ef", "gh"], fits) == [["ab", "cd", "ef"], ["gh"]]
    assert reduce_groups(["abcdef", "ghijkl", "mnopqr"], fits) == [["abcdef", "ghijkl"], ["mnopqr"]]  # pairs
    assert reduce_groups(["abcdefgh"], fits) == [["abcdefgh"]]
    assert pack_consecutive([4, 1, 1, 9, 2], lambda g: sum(g) <= 6) == [[4, 1, 1], [9], [2]]


def test_a_job_past_its_time_limit_fails_with_a_clear_error(tiny_models: Path) -> None:
    outputs = _runner("tiny-llm-deadline").predict([SummarizeInput(text="The fox jumps.", style="abstractive")])
    assert isinstance(outputs[0], GenerationTimeLimitError)
    assert "job_time_limit_s" in str(outputs[0]) and "0 s per job" in str(outputs[0])


def test_sampling_settings_run_in_their_own_group(translator: CausalLM, greedy: str) -> None:
    hot, cold = translator.predict([TranslateInput(text="fox", target_language="fr", temperature=0.7, top_p=0.9),
                                    TranslateInput(text="fox", target_language="fr")])
    assert isinstance(hot, dict) and hot["generated_tokens"] >= 1
    assert isinstance(cold, dict) and cold["translation"] == greedy


def test_extractive_qa_answers_with_a_span_of_the_context_across_windows(tiny_models: Path) -> None:
    qa = create_runner(ModelSpec(name="qa", kind="extractive_qa", runner="hf_extractive_qa",
                                 source=str(tiny_models / "tiny-qa")))
    assert isinstance(qa, ExtractiveQA)
    qa.setup()
    short_context, long_context = "the answer is forty two.", "abc def ghi. " * 40
    short, long, cut = qa.predict([
        AnswerInput(question="what is the answer?", context=short_context),
        AnswerInput(question="what?", context=long_context),
        AnswerInput(question="what?", context=long_context, truncate=True),
    ])
    assert short["answer"] == short_context[short["start"] : short["end"]] and short["answer"]
    assert 0 < short["score"] <= 1 and short["chunks"] == 1
    assert long["chunks"] > 1 and long["answer"] == long_context[long["start"] : long["end"]]
    assert (cut["chunks"], cut["truncated"]) == (1, True)


SUMMARY = "The council approved the library. It will cost 12 million dollars. Work starts in May."


@pytest.mark.parametrize(("max_words", "max_sentences", "expected", "trimmed"), [
    (None, 3, SUMMARY, False),
    (None, 2, "The council approved the library. It will cost 12 million dollars.", True),
    (15, 3, SUMMARY, False),  # exactly 15 words
    (12, 3, "The council approved the library. It will cost 12 million dollars.", True),
    (9, 3, "The council approved the library.", True),
    (3, 3, "The council approved", True),  # the first sentence alone is too long: cut at 3 words
])
def test_a_summary_is_held_to_the_requested_length(max_words: int | None, max_sentences: int, expected: str,
                                                   trimmed: bool) -> None:
    assert within_length(SUMMARY, max_words=max_words, max_sentences=max_sentences) == (expected, trimmed)


def test_a_summary_over_max_words_comes_back_trimmed(llm: CausalLM, greedy: str) -> None:
    words = greedy.split()
    assert len(words) >= 1
    (long, short) = llm.predict([SummarizeInput(text="A document.", style="abstractive", max_words=len(words)),
                                 SummarizeInput(text="A document.", style="abstractive", max_words=1)])
    assert isinstance(long, dict) and isinstance(short, dict)
    assert (long["summary"], long["trimmed"]) == (greedy, False)
    assert short["summary"] == words[0] and short["trimmed"] is (len(words) > 1)
