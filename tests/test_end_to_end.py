"""Submit real jobs through the Client to a real worker process; assert on the rows."""

from __future__ import annotations

import os

from producer import Client
from producer.worker_process import WorkerProcess

LABELS = ["sports", "politics", "business", "science"]


def test_sentiment_job_round_trip(worker: WorkerProcess, client: Client) -> None:
    job = client.classify("I loved it", model="sentiment")
    assert job.status == "queued"
    view = client.wait(job.id, timeout=60)
    assert view.status == "succeeded", view.error_message
    assert view.output["label"] == "positive"
    assert {s["label"] for s in view.output["scores"]} == {"positive", "negative"}
    assert abs(sum(s["score"] for s in view.output["scores"]) - 1) < 1e-3
    assert view.attempts == 1
    assert view.created_at <= view.started_at <= view.finished_at
    assert view.created_at.tzinfo is not None
    assert view.worker


def test_zero_shot_uses_labels_from_request(worker: WorkerProcess, client: Client) -> None:
    view = client.wait(client.classify("The striker scored twice", labels=LABELS).id, timeout=60)
    assert view.status == "succeeded", view.error_message
    assert view.model == "zero-shot"
    assert view.output["label"] == "sports"
    assert [s["label"] for s in view.output["scores"]] != [] and len(view.output["scores"]) == 4


def test_extractive_summary_picks_input_sentences(worker: WorkerProcess, client: Client) -> None:
    text = (
        "Solar panels are getting cheaper every year. Many homeowners now install them. "
        "The weather was sunny on Tuesday. Governments offer subsidies for renewable energy. "
        "Experts expect solar power to keep growing."
    )
    view = client.wait(client.summarize(text, max_sentences=2).id, timeout=60)
    assert view.status == "succeeded", view.error_message
    assert len(view.output["sentences"]) == 2
    for sentence_index in view.output["sentences"]:
        assert 0 <= sentence_index < 5
    assert all(part.strip() in text for part in view.output["summary"].split(". ") if part)


def test_generic_hf_classifier_and_seq2seq(worker: WorkerProcess, client: Client) -> None:
    cls = client.classify("abc def", model="tiny-classifier")
    s2s = client.summarize("abc def ghi. jkl mno.", model="tiny-seq2seq")
    cls_view, s2s_view = client.wait_many([cls.id, s2s.id], timeout=60)
    assert cls_view.status == "succeeded", cls_view.error_message
    assert cls_view.output["label"] in {"alpha", "beta", "gamma"}
    assert len(cls_view.output["scores"]) == 3
    assert s2s_view.status == "succeeded", s2s_view.error_message
    assert isinstance(s2s_view.output["summary"], str)


def test_bulk_of_500_all_succeed(worker: WorkerProcess, client: Client) -> None:
    texts = [f"Review number {i}: {'great' if i % 2 else 'awful'} product." for i in range(500)]
    jobs = client.submit_many([{"text": t, "model": "sentiment"} for t in texts])
    assert len({j.id for j in jobs}) == 500
    views = client.wait_many([j.id for j in jobs], timeout=240)
    assert [v.status for v in views] == ["succeeded"] * 500
    assert sum(v.output["label"] == ("positive" if i % 2 else "negative") for i, v in enumerate(views)) >= 450


def test_model_is_loaded_and_run_by_its_own_thread(worker: WorkerProcess, client: Client) -> None:
    # OpenMP keeps a team of threads per thread that starts parallel work: loading in one thread
    # and running in another left two teams fighting over the cores (~35% slower on 2 cores).
    view = client.wait(client.classify("which thread?", model="threads").id, timeout=60)
    assert view.status == "succeeded", view.error_message
    assert view.output["runs_in"] == view.output["loaded_in"] == "batcher-threads"
    assert view.output["torch_threads"] == (os.cpu_count() or 1)  # TEXTQ_TORCH_THREADS' default, set in that thread
    assert view.output["gomp_spincount"] == os.environ.get("GOMP_SPINCOUNT", "10000")  # the worker's default
