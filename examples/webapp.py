"""A web backend that uses textq: `POST /reviews` queues a sentiment job and answers at once;
`GET /reviews/{id}` returns the verdict once a worker has written it to the jobs table.

The web process never loads a model: it only writes a row and a message (`Client`). Run it with
a worker against the same database and Redis:

    TEXTQ_DATABASE_URL=... TEXTQ_BROKER_URL=... textq worker --models sentiment
    TEXTQ_DATABASE_URL=... TEXTQ_BROKER_URL=... uvicorn examples.webapp:app
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from producer import Client, InvalidJobError, JobNotFoundError, JobView


class ReviewIn(BaseModel):
    text: str


class Review(BaseModel):
    id: uuid.UUID
    status: str  # queued, running, succeeded, failed, cancelled or expired
    sentiment: str | None = None  # "positive" / "negative" once succeeded
    score: float | None = None
    error: str | None = None


def _review(job: JobView) -> Review:
    output = job.output or {}
    score = next((s["score"] for s in output.get("scores", []) if s["label"] == output.get("label")), None)
    return Review(id=job.id, status=job.status, sentiment=output.get("label"), score=score, error=job.error_message)


def textq(request: Request) -> Client:
    client: Client = request.app.state.textq
    return client


def create_app(client: Client | None = None) -> FastAPI:
    """The app; without `client` it makes one from TEXTQ_* settings at start-up and closes it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.textq = client or Client()
        yield
        if client is None:
            app.state.textq.close()

    app = FastAPI(title="reviews", lifespan=lifespan)

    # Plain `def` routes: Client is blocking (database, Redis), so FastAPI runs them in its threadpool.
    @app.post("/reviews", status_code=202)
    def post_review(review: ReviewIn, jobs: Annotated[Client, Depends(textq)]) -> Review:
        """Queue the review's sentiment; poll GET /reviews/{id} for the verdict."""
        try:
            return _review(jobs.classify(review.text, model="sentiment"))
        except InvalidJobError as exc:  # textq names each bad field and the rule it broke
            raise HTTPException(422, [{"field": e.field, "message": e.message} for e in exc.errors]) from None

    @app.get("/reviews/{review_id}")
    def get_review(review_id: uuid.UUID, jobs: Annotated[Client, Depends(textq)]) -> Review:
        try:
            return _review(jobs.get(review_id))
        except JobNotFoundError:
            raise HTTPException(404, f"no review {review_id}") from None

    return app


app = create_app()
