"""Feedback: a corrected label for a finished classification job, kept for the next `textq finetune --from-feedback`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict
from sqlalchemy.orm import Session, sessionmaker

from db import versions as versions_store
from db.models import JobStatus
from producer.contract import JobView
from producer.errors import InvalidJobError


class FeedbackRequest(BaseModel):
    """The body of `POST /v1/jobs/{id}/feedback`."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, Strict()] = Field(min_length=1, max_length=255, description="the label the job should have answered")


class FeedbackView(BaseModel):
    """A stored correction: the job's text, the label it should have had, the version that answered."""

    model_config = ConfigDict(from_attributes=True)

    job_id: uuid.UUID
    model: str
    model_version: str | None = None
    text: str
    label: str
    created_at: datetime


def record_feedback(sessions: sessionmaker[Session], job: JobView, label: str) -> FeedbackView:
    """Store `label` as the right answer of `job`, a succeeded classification job read by the caller
    (the Client, so that only a job it may see is corrected); a later call replaces it.

    The label must be one the job could have answered: one of the model's labels (every label is
    in a classification output's `scores`).
    """
    if not isinstance(label, str) or not label.strip():
        raise InvalidJobError.single("label", "must be a non-empty string")
    if job.task != "classify" or job.status != JobStatus.SUCCEEDED:
        raise InvalidJobError.single(
            "job", f"job {job.id} is a {job.status} {job.task} job; feedback takes succeeded classification jobs"
        )
    known = [str(s["label"]) for s in (job.output or {}).get("scores", []) if isinstance(s, dict) and "label" in s]
    if label not in known:
        raise InvalidJobError.single("label", f"{label!r} is not one of the model's labels: {', '.join(known)}")
    with sessions.begin() as session:
        row = versions_store.save_feedback(
            session, job_id=job.id, model=job.model, model_version=job.model_version, text=job.input["text"], label=label
        )
        return FeedbackView.model_validate(row)


def feedback_examples(sessions: sessionmaker[Session], model: str) -> list[tuple[str, str]]:
    """(text, label) of every correction of `model`'s answers, oldest first."""
    with sessions() as session:
        return [(f.text, f.label) for f in versions_store.list_feedback(session, model=model)]


__all__ = ["FeedbackRequest", "FeedbackView", "feedback_examples", "record_feedback"]
