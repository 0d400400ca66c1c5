"""The jobs table as the benchmark reads it: empty it between measurements, wait until every row
is finished, and turn the rows' own timestamps into throughput and latency."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, select
from tqdm import tqdm

from db.engine import make_engine
from db.models import Job, JobStatus


@dataclass(frozen=True)
class Timings:
    jobs: int
    succeeded: int
    unfinished: int
    elapsed_s: float  # first submit → last finished_at
    jobs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    # medians of the two halves: created → started (queue, claim) and started → finished (batch)
    p50_wait_ms: float
    p50_run_ms: float
    # jobs per claim: rows claimed together share started_at, so this is the mean batch size
    mean_batch: float
    # jobs answered by the result cache (models with one)
    cache_hits: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Ledger:
    def __init__(self, database_url: str) -> None:
        self.engine: Engine = make_engine(database_url)

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(Job))

    def finished(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(Job.finished_at.is_not(None))).scalar_one())

    def first_failure(self) -> str | None:
        """The error of a finished job that did not succeed, if any: a bench must not time failures."""
        with self.engine.connect() as conn:
            row = conn.execute(select(Job.status, Job.error_type, Job.error_message).where(Job.finished_at.is_not(None),
                                                                   Job.status != JobStatus.SUCCEEDED).limit(1)).first()
        return None if row is None else f"{row.status}: {row.error_type}: {row.error_message}"

    def wait(self, expected: int, *, timeout_s: float, desc: str, poll_s: float = 0.1) -> int:
        """Block until `expected` rows are finished (or `timeout_s` passes); returns how many are."""
        deadline = time.monotonic() + timeout_s
        done = 0
        with tqdm(total=expected, desc=desc, unit="job", leave=False, dynamic_ncols=True) as bar:
            while done < expected and time.monotonic() < deadline:
                time.sleep(poll_s)
                now = self.finished()
                bar.update(now - done)
                done = now
        return done

    def timings(self, started: datetime, expected: int) -> Timings:
        """Throughput from `started` (just before the first submit) to the last finished_at;
        latency per job from created_at to finished_at."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Job.status, Job.created_at, Job.started_at, Job.finished_at)).all()
            hits = conn.execute(select(func.count()).where(Job.cached_from.is_not(None))).scalar_one()

        def ms(pairs: list[tuple[datetime | None, datetime | None]]) -> list[float]:
            return sorted((b - a).total_seconds() * 1000 for a, b in pairs if a is not None and b is not None)

        latencies = ms([(c, f) for _, c, _, f in rows])
        finished = [f for _, _, _, f in rows if f is not None]
        succeeded = sum(1 for s, _, _, _ in rows if s == JobStatus.SUCCEEDED)
        elapsed = max(((max(finished) if finished else started) - started).total_seconds(), 1e-9)
        return Timings(
            jobs=expected,
            succeeded=succeeded,
            unfinished=expected - len(finished),
            elapsed_s=elapsed,
            jobs_per_s=succeeded / elapsed,
            p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99),
            p50_wait_ms=percentile(ms([(c, st) for _, c, st, _ in rows]), 50),
            p50_run_ms=percentile(ms([(st, f) for _, _, st, f in rows]), 50),
            mean_batch=len(rows) / max(len({st for _, _, st, _ in rows if st is not None}), 1),
            cache_hits=int(hits),
        )

    def close(self) -> None:
        self.engine.dispose()
