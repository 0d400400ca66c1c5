"""Model versions without torch: `name@N` references, the model store, pinning at submit, deploy and delete.

A version is made by `textq finetune` (worker side); its row in `model_versions` is what producers
and workers on every machine agree on, its weights a directory under the model store.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.orm import Session, sessionmaker

from db import versions as store
from db.models import ModelVersion
from producer.contract import AnyJobRequest, resolve_model
from producer.errors import InvalidJobError, TextqError
from producer.registry import ModelSpec, Registry

# The runner of models made by `textq finetune` (worker.versions.FineTunedRunner).
FINE_TUNED_RUNNER = "fine_tuned"
_REF = re.compile(r"^(?P<model>[^@\s]+)@(?P<version>\d{1,9})$")


class VersionSettings(BaseSettings):
    """Where versions live and how workers follow them (env prefix `TEXTQ_`)."""

    model_config = SettingsConfigDict(env_prefix="TEXTQ_", extra="ignore")

    # The weights of every version, one directory per version; shared by all workers (a volume).
    model_store: Path = Path("models")
    # How often a worker looks for a newly deployed version of the fine-tuned models it serves.
    version_poll_s: float = Field(2.0, gt=0)
    # Versions besides the active one a worker keeps loaded for jobs pinned to them.
    max_pinned_versions: int = Field(1, ge=0)
    # A pinned version that ran no job for this long is freed.
    pinned_idle_s: float = Field(60.0, gt=0)


@lru_cache(maxsize=1)
def version_settings() -> VersionSettings:
    return VersionSettings()


class VersionError(TextqError, LookupError):
    """A model version that does not exist, cannot be deployed or cannot be deleted; the message says why."""


@dataclass(frozen=True, slots=True)
class ModelRef:
    """`support` or `support@2`."""

    model: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if "@" not in text:
            return cls(text)
        match = _REF.match(text)
        if match is None:
            raise VersionError(f"{text!r} is not a model version: write NAME@N, e.g. support@2")
        return cls(match["model"], int(match["version"]))

    def __str__(self) -> str:
        return self.model if self.version is None else version_label(self.model, self.version)


def version_label(model: str, version: int) -> str:
    """How a version is named everywhere (CLI, jobs' model_version): `support@2`."""
    return f"{model}@{version}"


class VersionView(BaseModel):
    """A model version as the CLI and callers see it."""

    model_config = ConfigDict(from_attributes=True)

    model: str
    version: int
    label: str
    path: str
    base: str
    data_hash: str
    labels: list[str]
    metrics: dict[str, Any]
    training_seconds: float
    created_at: datetime
    active: bool
    deployed_at: datetime | None = None


def resolve_pinned_model(
    request: AnyJobRequest, registry: Registry, sessions: sessionmaker[Session]
) -> tuple[ModelSpec, str | None]:
    """The model a request runs on and the version it pins (`model="support@2"`), or InvalidJobError."""
    if request.model is None or "@" not in request.model:
        return resolve_model(request, registry), None
    try:
        ref = ModelRef.parse(request.model)
    except VersionError as exc:
        raise InvalidJobError.single("model", str(exc)) from None
    spec = resolve_model(request.model_copy(update={"model": ref.model}), registry)
    assert ref.version is not None
    with sessions() as session:
        row = store.get_version(session, model=ref.model, version=ref.version)
        known = [v.label for v in store.list_versions(session, model=ref.model)] if row is None else []
    if row is None:
        have = f"versions: {', '.join(known)}" if known else "it has no versions (only models made by textq finetune have)"
        raise InvalidJobError.single("model", f"unknown model version {ref}; {have}")
    return spec, row.label


class ModelVersions:
    """The versions of fine-tuned models: list, look up, deploy (activate) and delete."""

    def __init__(self, sessions: sessionmaker[Session], store_dir: Path | None = None) -> None:
        self.sessions = sessions
        self.store_dir = store_dir or version_settings().model_store

    def list(self, model: str | None = None) -> list[VersionView]:
        with self.sessions() as session:
            return [_view(v) for v in store.list_versions(session, model=model)]

    def get(self, ref: ModelRef | str) -> VersionView:
        model, version = self._numbered(ref)
        with self.sessions() as session:
            return _view(self._existing(session, model, version))

    def active(self, model: str) -> VersionView | None:
        with self.sessions() as session:
            row = store.active_version(session, model=model)
            return None if row is None else _view(row)

    def directory(self, version: VersionView) -> Path:
        """The weights directory of `version` under this machine's model store."""
        return self.store_dir / version.path

    def deploy(self, ref: ModelRef | str) -> VersionView:
        """Make a version the active one: workers serving its model switch to it within seconds."""
        model, version = self._numbered(ref)
        with self.sessions.begin() as session:
            self._existing(session, model, version)
            store.activate_version(session, model=model, version=version)
        return self.get(ModelRef(model, version))

    def delete(self, ref: ModelRef | str) -> VersionView:
        """Delete a version that is not active: its weights go, its number is never used again, and
        jobs pinned to it fail."""
        model, version = self._numbered(ref)
        with self.sessions.begin() as session:
            row = self._existing(session, model, version)
            if row.active:
                raise VersionError(f"{row.label} is the active version: deploy another one before deleting it")
            view = _view(row)
            store.delete_version(session, model=model, version=version)
        shutil.rmtree(self.directory(view), ignore_errors=True)
        return view

    def _numbered(self, ref: ModelRef | str) -> tuple[str, int]:
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if parsed.version is None:
            raise VersionError(f"name a version: {parsed.model}@N (textq models lists them)")
        return parsed.model, parsed.version

    def _existing(self, session: Session, model: str, version: int) -> ModelVersion:
        row = store.get_version(session, model=model, version=version)
        if row is None:
            known = [v.label for v in store.list_versions(session, model=model)]
            raise VersionError(
                f"no version {version_label(model, version)}; "
                + (f"versions: {', '.join(known)}" if known else f"{model!r} has no versions")
            )
        return row


def _view(row: ModelVersion) -> VersionView:
    return VersionView.model_validate(row)


__all__ = [
    "FINE_TUNED_RUNNER",
    "ModelRef",
    "ModelVersions",
    "VersionError",
    "VersionSettings",
    "VersionView",
    "resolve_pinned_model",
    "version_label",
    "version_settings",
]
