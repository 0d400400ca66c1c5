"""examples/webapp.py, the README's web backend, against a real worker: a review in, a verdict out."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from examples.webapp import create_app
from producer import Client
from producer.worker_process import WorkerProcess
from tests.helpers import wait_until


def test_review_gets_a_sentiment(worker: WorkerProcess, client: Client) -> None:
    with TestClient(create_app(client)) as http:
        posted = http.post("/reviews", json={"text": "I loved this phone, the battery is great"})
        assert posted.status_code == 202, posted.text
        assert posted.json()["status"] == "queued" and posted.json()["sentiment"] is None
        review: dict[str, Any] = {}

        def finished() -> bool:
            review.update(http.get(f"/reviews/{posted.json()['id']}").json())
            return review["status"] not in ("queued", "running")

        wait_until(finished, timeout=60, what="the review's sentiment")
        assert review["status"] == "succeeded", review["error"]
        assert review["sentiment"] == "positive"
        assert 0.5 < review["score"] <= 1


def test_bad_review_and_unknown_id(client: Client) -> None:
    with TestClient(create_app(client)) as http:
        response = http.post("/reviews", json={"text": "   "})
        assert response.status_code == 422
        assert response.json()["detail"] == [{"field": "text", "message": "must not be empty or only whitespace"}]
        assert http.get(f"/reviews/{uuid.uuid4()}").status_code == 404
