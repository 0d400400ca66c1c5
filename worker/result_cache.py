"""The result cache of a model (opt-in: `"result_cache": true` in its spec): a job that asks the same
model version the same thing as a job that already succeeded reuses that job's output, uncomputed.

A key is the sha256 of the job's tenant, the model's spec (less its batching settings), the version
of the weights that would compute it, the task and the validated input (text and options, defaults
filled in). Tenants never share entries: a hit names its source job (`cached_from`) and answers
faster, both of which would tell one tenant what another submitted. Entries live in the database
(db/result_cache.py), are written in the transaction that records their job's result, and are
bounded per model by age (`TEXTQ_RESULT_CACHE_MAX_AGE_S`) and count (`TEXTQ_RESULT_CACHE_MAX_ENTRIES`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db import result_cache
from db.models import utcnow
from db.result_cache import CacheHit, NewEntry
from db.store import ClaimedJob
from producer.contract import JobInput
from producer.registry import ModelSpec

log = logging.getLogger(__name__)

# Spec fields that change how jobs are batched, never what a job's output is.
BATCHING_FIELDS = frozenset({"max_batch_size", "max_batch_tokens", "max_wait_ms", "result_cache"})
# How often a writer prunes its model's entries (the first write prunes at once).
PRUNE_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class CacheLimits:
    max_entries: int
    max_age: timedelta


class ResultCache:
    """One model's cache. `lookup` runs in the batcher thread; `remember` and `prune_if_due` in the writer's."""

    def __init__(self, spec: ModelSpec, sessions: sessionmaker[Session], limits: CacheLimits,
                 *, prune_interval_s: float = PRUNE_INTERVAL_S) -> None:
        self.spec = spec
        self.sessions = sessions
        self.limits = limits
        self.prune_interval_s = prune_interval_s
        self._spec_part = json.dumps(spec.model_dump(mode="json", exclude=set(BATCHING_FIELDS)), sort_keys=True)
        self._next_prune = 0.0

    def key(self, claim: ClaimedJob, job_input: JobInput, version: str | None) -> str:
        material = json.dumps([claim.tenant, self._spec_part, version, self.spec.task,
                               job_input.model_dump(mode="json")], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode()).hexdigest()

    def lookup(self, keys: Collection[str]) -> dict[str, CacheHit]:
        """The live entries among `keys`; an unreadable cache is a miss (the jobs are computed)."""
        try:
            with self.sessions() as session:
                return result_cache.cached_results(session, keys=keys, created_after=utcnow() - self.limits.max_age)
        except Exception:
            log.exception("could not read the result cache of %s; computing the batch", self.spec.name)
            return {}

    def remember(self, session: Session, entries: Sequence[NewEntry]) -> None:
        """In the transaction that records the entries' jobs as succeeded."""
        result_cache.remember_results(session, model=self.spec.name, entries=entries,
                                      stale_before=utcnow() - self.limits.max_age)

    def prune_if_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.prune_interval_s
        try:
            with self.sessions.begin() as session:
                gone = result_cache.prune_results(session, model=self.spec.name, keep=self.limits.max_entries,
                                                  created_before=utcnow() - self.limits.max_age)
        except Exception:  # the next prune tries again; lookups ignore entries past their age meanwhile
            log.exception("could not prune the result cache of %s", self.spec.name)
            return
        if gone:
            log.info("pruned %d result cache entries of %s", gone, self.spec.name)


__all__ = ["BATCHING_FIELDS", "CacheLimits", "ResultCache"]
