"""The store API of model versions and feedback: every read and write of `model_versions` and `feedback`.

Like db/store.py: keyword-only after the session, and no commits (the caller owns the transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Feedback, ModelVersion, utcnow

_LIVE = ModelVersion.deleted_at.is_(None)


@dataclass(frozen=True, slots=True)
class NewVersion:
    """What `textq finetune` registers; the version number is allocated by `add_version`."""

    model: str
    base: str
    data_hash: str
    labels: list[str]
    metrics: dict[str, Any]
    training_seconds: float


def next_version_number(session: Session, *, model: str, at_least: int = 1) -> int:
    """One more than the highest version of `model`, deleted ones included (and not below `at_least`)."""
    highest = session.execute(select(func.max(ModelVersion.version)).where(ModelVersion.model == model)).scalar_one()
    return max((highest or 0) + 1, at_least)


def add_version(session: Session, *, new: NewVersion, version: int, path: str) -> ModelVersion:
    """Register version `version` of `new.model`, inactive; a taken number raises IntegrityError on flush."""
    row = ModelVersion(
        model=new.model, version=version, path=path, base=new.base, data_hash=new.data_hash, labels=list(new.labels),
        metrics=new.metrics, training_seconds=new.training_seconds, created_at=utcnow(), active=False,
    )
    session.add(row)
    session.flush()
    return row


def get_version(session: Session, *, model: str, version: int) -> ModelVersion | None:
    """`model@version`, unless it does not exist or was deleted."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version, _LIVE)
    ).one_or_none()


def active_version(session: Session, *, model: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.active)).one_or_none()


def list_versions(session: Session, *, model: str | None = None) -> list[ModelVersion]:
    """Versions not deleted, by model, then version number."""
    stmt = select(ModelVersion).where(_LIVE).order_by(ModelVersion.model, ModelVersion.version)
    if model is not None:
        stmt = stmt.where(ModelVersion.model == model)
    return list(session.scalars(stmt).all())


def activate_version(session: Session, *, model: str, version: int) -> bool:
    """Make `model@version` the active one (and no other); False if it does not exist."""
    if get_version(session, model=model, version=version) is None:
        return False
    # Two statements: a unique index is checked row by row, so one UPDATE that moves the flag could
    # see two active rows half-way on PostgreSQL.
    session.execute(
        update(ModelVersion).where(ModelVersion.model == model, ModelVersion.active).values(active=False),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.model == model, ModelVersion.version == version)
        .values(active=True, deployed_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return True


def delete_version(session: Session, *, model: str, version: int) -> bool:
    """Mark `model@version` deleted (and inactive); False if there was no such live version."""
    result = session.execute(
        update(ModelVersion)
        .where(ModelVersion.model == model, ModelVersion.version == version, _LIVE)
        .values(deleted_at=utcnow(), active=False),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def save_feedback(
    session: Session, *, job_id: uuid.UUID, model: str, model_version: str | None, text: str, label: str
) -> Feedback:
    """Store (or replace) the corrected label of a job."""
    row = session.get(Feedback, job_id)
    if row is None:
        row = Feedback(job_id=job_id, model=model, model_version=model_version, text=text, label=label, created_at=utcnow())
        session.add(row)
    else:
        row.label, row.model_version, row.created_at = label, model_version, utcnow()
    session.flush()
    return row


def list_feedback(session: Session, *, model: str) -> Sequence[Feedback]:
    """Every correction of `model`'s answers, oldest first."""
    return session.scalars(select(Feedback).where(Feedback.model == model).order_by(Feedback.created_at)).all()


__all__ = [
    "NewVersion",
    "activate_version",
    "active_version",
    "add_version",
    "delete_version",
    "get_version",
    "list_feedback",
    "list_versions",
    "next_version_number",
    "save_feedback",
]
