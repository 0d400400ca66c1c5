"""Bad input is refused at submit with the field and the rule; nothing is written or enqueued."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db.engine import session_factory
from db.models import Job
from producer import Client, InvalidJobError
from producer.contract import MAX_TIMEOUT_S, ClassifyInput, parse_job_input, parse_request
from producer.limits import DEFAULT_LIMITS, Limits
from producer.registry import DEFAULT_MODELS
from tests.conftest import Backend

BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    ({"text": ""}, "text", "empty"),
    ({"text": "   \n\t "}, "text", "whitespace"),
    ({"text": None}, "text", "valid string"),
    ({"text": 42}, "text", "valid string"),
    ({"text": 4.2}, "text", "valid string"),
    ({"text": {"nested": "object"}}, "text", "valid string"),
    ({"text": ["a", "list"]}, "text", "valid string"),
    ({"text": "x" * 20_001}, "text", "the limit is 20,000"),
    ({"text": "x" * 10_000_000}, "text", "the limit is 20,000"),
    ({"text": "lone \ud800 surrogate"}, "text", "surrogate"),
    ({"text": "bell \x07 char"}, "text", "control character U+0007"),
    ({"text": "nul \x00 byte"}, "text", "control character U+0000"),
    ({"text": "ok", "model": "no-such-model"}, "model", "unknown model 'no-such-model'; available:"),
    ({"task": "paint", "text": "ok"}, "request", "task must be one of 'classify', 'summarize', 'translate'"),
    ({"text": "ok", "labels": []}, "labels", "at least one label"),
    ({"text": "ok", "labels": ["a", "b", "A"]}, "labels", "duplicated"),
    ({"text": "ok", "labels": ["a", ""]}, "labels", "empty"),
    ({"text": "ok", "labels": [f"l{i}" for i in range(33)]}, "labels", "the limit is 32"),
    ({"text": "ok", "labels": ["x" * 101]}, "labels", "longer than 100"),
    ({"text": "ok", "labels": "sports"}, "labels", "valid list"),
    ({"text": "ok", "labels": [1, 2]}, "labels.0", "valid string"),
    ({"text": "ok", "model": "zero-shot"}, "labels", "give the candidate labels"),
    ({"text": "ok", "model": "sentiment", "labels": ["a", "b"]}, "labels", "fixed labels"),
    ({"task": "summarize", "text": "ok", "max_sentences": 0}, "max_sentences", "greater than or equal to 1"),
    ({"task": "summarize", "text": "ok", "max_sentences": -3}, "max_sentences", "greater than or equal to 1"),
    ({"task": "summarize", "text": "ok", "max_sentences": 10**9}, "max_sentences", "at most 20"),
    ({"task": "summarize", "text": "ok", "max_sentences": "3"}, "max_sentences", "valid integer"),
    ({"task": "summarize", "text": "ok", "model": "sentiment"}, "model", "serves classify jobs, not summarize"),
    ({"text": "ok", "unknown_field": 1}, "unknown_field", "Extra inputs are not permitted"),
    ({"text": "ok", "priority": 10}, "priority", "less than or equal to 9"),
    ({"text": "ok", "priority": "high"}, "priority", "valid integer"),
    ({"text": "ok", "timeout": -1}, "timeout", "greater than 0"),
    # Strict like priority: a JSON number of seconds, finite and at most a week.
    ({"text": "ok", "timeout": "10"}, "timeout", "valid number"),
    ({"text": "ok", "timeout": True}, "timeout", "valid number"),
    ({"text": "ok", "timeout": float("nan")}, "timeout", "finite number"),
    ({"text": "ok", "timeout": float("inf")}, "timeout", "finite number"),
    ({"text": "ok", "timeout": json.loads("1e309")}, "timeout", "finite number"),
    ({"text": "ok", "timeout": 10**7}, "timeout", f"less than or equal to {MAX_TIMEOUT_S}"),
    # Text that shows nothing is as empty as no text.
    ({"text": "\u200b\u200b"}, "text", "no visible character"),
    ({"text": " \ufeff\u2060 \u200d"}, "text", "no visible character"),
    ({"text": "\u200c\u00ad\u3164"}, "text", "no visible character"),
    # C1 controls are control characters too.
    ({"text": "next \x85 line"}, "text", "control character U+0085"),
    ({"text": "csi \x9b char"}, "text", "control character U+009B"),
    ({"text": "ok", "labels": ["sports", "\u200b"]}, "labels", "no visible character"),
    ({"text": "ok", "labels": ["a\x90b"]}, "labels", "control character U+0090"),
    ({"text": "ok", "labels": ["sports", "sports\u200b"]}, "labels", "duplicated"),
    # The generative and embedding tasks (issue #14).
    ({"task": "answer", "question": "", "context": "Some context."}, "question", "empty"),
    ({"task": "answer", "question": "Why?", "context": "  "}, "context", "empty"),
    ({"task": "answer", "question": "Why?"}, "context", "Field required"),
    ({"task": "translate", "text": "ok", "target_language": "klingon"}, "target_language", "is not supported; use one of"),
    ({"task": "translate", "text": "ok"}, "target_language", "Field required"),
    ({"task": "translate", "text": "ok", "target_language": "fr", "source_language": "French"},
     "source_language", "must differ from target_language"),
    ({"task": "translate", "text": "ok", "target_language": "fr", "max_new_tokens": 0},
     "max_new_tokens", "greater than or equal to 1"),
    ({"task": "translate", "text": "ok", "target_language": "fr", "max_new_tokens": 10_000},
     "max_new_tokens", "less than or equal to 4096"),
    ({"task": "translate", "text": "ok", "target_language": "fr", "model": "tiny-llm-translate", "max_new_tokens": 65},
     "max_new_tokens", "at most 64 for model 'tiny-llm-translate' (its options.max_new_tokens_limit)"),
    ({"task": "answer", "question": "q", "context": "c", "temperature": -0.1}, "temperature", "greater than or equal to 0"),
    ({"task": "answer", "question": "q", "context": "c", "temperature": 1.2, "model": "tiny-llm-answer"},
     "temperature", "at most 1.0 for model 'tiny-llm-answer'"),
    ({"task": "answer", "question": "q", "context": "c", "top_p": 0}, "top_p", "greater than 0"),
    ({"task": "answer", "question": "q", "context": "c", "model": "tiny-llm"}, "model", "serves summarize jobs, not answer"),
    ({"task": "summarize", "text": "ok", "max_words": 20}, "max_words", "is extractive"),
    ({"task": "summarize", "text": "ok", "model": "tiny-llm", "style": "extractive"}, "style", "writes abstractive summaries"),
    ({"task": "summarize", "text": "ok", "style": "poem"}, "style", "'extractive' or 'abstractive'"),
    ({"task": "embed", "text": ""}, "text", "empty"),
    ({"task": "embed", "text": "ok", "truncate": "yes"}, "truncate", "valid boolean"),
]


def _count_rows(backend: Backend) -> int:
    with session_factory(backend.database_url)() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _queued_messages(backend: Backend) -> int:
    r = redis.Redis.from_url(backend.broker_url)
    return sum(int(r.llen(k)) for k in r.keys("textq.*") if r.type(k) == b"list")


@pytest.mark.parametrize(("request_data", "field", "rule"), BAD_REQUESTS, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_request_is_refused_and_nothing_is_written(
    client: Client, backend: Backend, request_data: dict[str, Any], field: str, rule: str
) -> None:
    rows, messages = _count_rows(backend), _queued_messages(backend)
    with pytest.raises(InvalidJobError) as info:
        client.submit(request_data)
    assert info.value.errors[0].field == field, info.value
    assert rule in str(info.value)
    assert _count_rows(backend) == rows
    assert _queued_messages(backend) == messages


def test_one_bad_request_in_a_bulk_refuses_the_whole_bulk(client: Client, backend: Backend) -> None:
    rows = _count_rows(backend)
    requests: list[dict[str, object]] = [{"text": f"fine {i}", "model": "echo"} for i in range(10)]
    requests[7] = {"text": "", "model": "echo"}
    with pytest.raises(InvalidJobError) as info:
        client.submit_many(requests)
    assert info.value.errors[0].field == "requests[7].text"
    assert _count_rows(backend) == rows


def test_oversized_bulk_is_refused(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="limit is 10000"):
        client.submit_many([{"text": "x", "model": "echo"}] * 10_001)


def test_sdk_helpers_validate_too(client: Client) -> None:
    with pytest.raises(InvalidJobError, match="text: must not be empty"):
        client.classify("  ")
    with pytest.raises(InvalidJobError, match="labels: label 'a' is duplicated"):
        client.classify("ok", labels=["a", "a"])
    with pytest.raises(InvalidJobError, match="max_sentences"):
        client.summarize("ok", max_sentences=0)


def _shows_something(text: str) -> bool:
    return any(not c.isspace() and unicodedata.category(c) not in ("Cf", "Zs", "Zl", "Zp", "Cc") for c in text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_either_accepted_unchanged_or_refused_with_a_text_error(text: str) -> None:
    try:
        request = parse_request({"text": text}, DEFAULT_LIMITS)
    except InvalidJobError as exc:
        assert [e.field for e in exc.errors] == ["text"]
        return
    assert request.text == text
    assert _shows_something(text)
    assert not any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text)
    text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=40))
def test_labels_accepted_only_when_unique_nonblank_and_within_limits(labels: list[str]) -> None:
    try:
        request = parse_request({"text": "ok", "labels": labels}, DEFAULT_LIMITS)
    except InvalidJobError as exc:
        assert [e.field for e in exc.errors] == ["labels"]
        return
    assert request.labels == labels
    assert len({label.strip().casefold() for label in labels}) == len(labels) <= 32
    assert all(_shows_something(label) for label in labels)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(max_size=5), max_size=5))
def test_arbitrary_json_objects_never_crash_the_contract(data: dict[str, Any]) -> None:
    try:
        parse_request(data, DEFAULT_LIMITS)
    except InvalidJobError as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(), st.booleans(), st.floats(), st.integers(), st.none()))
def test_timeout_is_a_finite_positive_number_of_at_most_a_week_or_nothing(timeout: Any) -> None:
    try:
        request = parse_request({"text": "ok", "timeout": timeout}, DEFAULT_LIMITS)
    except InvalidJobError as exc:
        assert [e.field for e in exc.errors] == ["timeout"]
        return
    assert timeout is None or (type(timeout) in (int, float) and 0 < timeout <= MAX_TIMEOUT_S)
    assert request.timeout == timeout


def test_limits_are_the_callers_not_the_environments() -> None:
    tight = Limits(max_text_chars=10, max_labels=2, max_label_chars=5, max_summary_sentences=2)
    for data, field, rule in (
        ({"text": "x" * 11}, "text", "the limit is 10"),
        ({"text": "ok", "labels": ["a", "b", "c"]}, "labels", "the limit is 2"),
        ({"text": "ok", "labels": ["sixsix"]}, "labels", "longer than 5"),
        ({"task": "summarize", "text": "ok", "max_sentences": 3}, "max_sentences", "at most 2"),
    ):
        parse_request(data, DEFAULT_LIMITS)  # within the defaults
        with pytest.raises(InvalidJobError) as info:
            parse_request(data, tight)
        assert info.value.errors[0].field == field and rule in str(info.value)
    loose = Limits(max_text_chars=30_000)
    assert parse_request({"text": "x" * 25_000}, loose).text == "x" * 25_000
    # The worker's check of a stored input takes its own limits the same way.
    sentiment = next(s for s in DEFAULT_MODELS if s.name == "sentiment")
    assert isinstance(parse_job_input(sentiment, {"text": "x" * 25_000}, loose), ClassifyInput)
    with pytest.raises(InvalidJobError) as info:
        parse_job_input(sentiment, {"text": "x" * 25_000}, DEFAULT_LIMITS)
    assert "input.text: is 25,000 characters; the limit is 20,000" in str(info.value)
