"""A fine-tuned model's versions in a worker: the active one, switched without downtime, and pinned ones.

Every version is an `hf_classifier` runner over its directory in the model store. Everything here
runs in the model's batcher thread, between batches: it polls `model_versions` every
`TEXTQ_VERSION_POLL_S` seconds; when another version became active it loads that one beside the
current one, switches, then frees the old one. A batch runs wholly on one version, so the jobs'
versions change over at one point in time, and none is dropped or computed twice (the claim and
the pipeline are untouched). Jobs pinned to another version run on it, loaded on demand and freed
when idle; a pinned version that was deleted fails its jobs with a clear error.

Peak memory: two copies of the weights during a switch (old and new; plus up to
`TEXTQ_MAX_PINNED_VERSIONS` pinned ones); docs/finetune.md has the measured numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import versions as store
from db.engine import session_factory
from db.models import ModelVersion
from db.settings import DatabaseSettings
from producer.registry import ModelSpec
from producer.versions import ModelRef, VersionSettings, version_settings
from worker.runners.base import Runner, VersionNotServedError
from worker.runners.huggingface import SequenceClassifier

log = logging.getLogger(__name__)


class NoActiveVersionError(LookupError):
    """A job for a fine-tuned model that has no active version yet (deploy one: `textq deploy NAME@N`)."""


class ModelVersionDeletedError(VersionNotServedError):
    """A job pinned to a version that was deleted after it was submitted."""


class FineTunedRunner(Runner):
    """The runner of a model made by `textq finetune` (registry runner `fine_tuned`)."""

    def __init__(
        self, spec: ModelSpec, sessions: sessionmaker[Session] | None = None, settings: VersionSettings | None = None
    ) -> None:
        super().__init__(spec)
        self.settings = settings or version_settings()
        self.sessions = sessions or session_factory(DatabaseSettings().database_url)
        self.active: SequenceClassifier | None = None
        self._pinned: OrderedDict[str, SequenceClassifier] = OrderedDict()
        self._pinned_used: dict[str, float] = {}
        self._next_poll = 0.0

    # `version` is the active version's label; a property, so that it follows switches.
    @property
    def version(self) -> str | None:
        return None if self.active is None else self.active.version

    def setup(self) -> None:
        """Load the active version (a worker may start before the first one is deployed)."""
        self._follow_active()

    def predict(self, batch: list[Any]) -> Sequence[dict[str, Any] | Exception]:
        return self.for_version(None).predict(batch)

    def for_version(self, pinned: str | None) -> Runner:
        if pinned is None or (self.active is not None and pinned == self.active.version):
            if self.active is None:
                raise NoActiveVersionError(
                    f"model {self.spec.name!r} has no deployed version: textq deploy {self.spec.name}@N"
                )
            return self.active
        runner = self._pinned.get(pinned) or self._load_pinned(pinned)
        self._pinned.move_to_end(pinned)
        self._pinned_used[pinned] = time.monotonic()
        return runner

    def between_batches(self) -> None:
        if time.monotonic() < self._next_poll:
            return
        try:
            self._follow_active()
        except Exception:  # the database is away: keep serving what is loaded, look again later
            log.exception("could not read the versions of %s; serving %s", self.spec.name, self.version)
        self._free_idle_pinned()

    def _follow_active(self) -> None:
        """Switch to the active version if another one became active: load beside, switch, free."""
        self._next_poll = time.monotonic() + self.settings.version_poll_s
        with self.sessions() as session:
            row = store.active_version(session, model=self.spec.name)
            existing = {v.label for v in store.list_versions(session, model=self.spec.name)}
        for label in [p for p in self._pinned if p not in existing]:
            self._free_pinned(label)  # deleted: its queued jobs fail instead of running on it
        if row is None or row.label == self.version:
            return
        started = time.perf_counter()
        loaded = self._pinned.pop(row.label, None) or self._load(row)
        old, self.active = self.active, loaded
        log.info("%s switched from %s to %s in %.1fs", self.spec.name, old and old.version, row.label,
                 time.perf_counter() - started)
        del old
        _release_memory()

    def _load_pinned(self, label: str) -> SequenceClassifier:
        ref = ModelRef.parse(label)
        if ref.model != self.spec.name or ref.version is None:
            raise VersionNotServedError(f"model {self.spec.name!r} cannot run a job pinned to {label!r}")
        with self.sessions() as session:
            row = store.get_version(session, model=ref.model, version=ref.version)
        if row is None:
            raise ModelVersionDeletedError(f"model version {label} was deleted; submit the job again without a pin")
        while len(self._pinned) >= self.settings.max_pinned_versions and self._pinned:
            self._free_pinned(next(iter(self._pinned)))  # least recently used first, before loading
        runner = self._load(row)
        if self.settings.max_pinned_versions:
            self._pinned[label] = runner
        return runner

    def _free_idle_pinned(self) -> None:
        idle_since = time.monotonic() - self.settings.pinned_idle_s
        for label in [p for p in self._pinned if self._pinned_used.get(p, 0.0) < idle_since]:
            self._free_pinned(label)

    def _free_pinned(self, label: str) -> None:
        self._pinned.pop(label, None)
        self._pinned_used.pop(label, None)
        _release_memory()

    def _load(self, row: ModelVersion) -> SequenceClassifier:
        directory = self.settings.model_store / row.path
        if not directory.is_dir():
            raise ModelVersionDeletedError(f"the weights of {row.label} are missing from the model store ({directory})")
        runner = SequenceClassifier(self.spec.model_copy(update={"source": str(directory), "runner": "hf_classifier"}))
        runner.setup()
        runner.version = row.label
        return runner


def _release_memory() -> None:
    """Free a dropped version now: collect (the worker froze its start-up objects, a version's among
    them) and hand freed heap pages back to the system."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the next load reuses the pages instead
        ctypes.CDLL("libc.so.6").malloc_trim(0)


__all__ = ["FineTunedRunner", "ModelVersionDeletedError", "NoActiveVersionError"]
