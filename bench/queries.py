"""`python -m bench.queries`: the jobs table's hot queries on a table of N rows (default 1,000,000)
in a fresh PostgreSQL database: median timings and query plans, to check that indexes keep polling,
listing, sweeping and purging fast as the table grows."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from db import overview, store, upgrade
from db.engine import make_engine, session_factory, shared_engine
from db.models import JobStatus, utcnow
from tests.services import create_postgres_database, drop_postgres_database

FILL = """
INSERT INTO jobs (id, model, task, status, input, output, attempts, priority, created_at, started_at,
                  finished_at, published_at, publish_count)
SELECT md5(i::text)::uuid,
       (ARRAY['sentiment', 'zero-shot', 'summarize'])[1 + i % 3],
       'classify',
       CASE WHEN i % 100 = 0 THEN 'queued' WHEN i % 100 = 1 THEN 'running' WHEN i % 50 = 2 THEN 'failed' ELSE 'succeeded' END,
       '{"text": "a short review of a product"}'::jsonb,
       CASE WHEN i % 100 > 1 THEN '{"label": "positive", "score": 0.9}'::jsonb END,
       1, 5,
       now() - make_interval(secs => (:n - i) * 1.0),
       now() - make_interval(secs => (:n - i) * 1.0),
       CASE WHEN i % 100 > 1 THEN now() - make_interval(secs => (:n - i) * 1.0) END,
       now() - make_interval(secs => (:n - i) * 1.0), 1
FROM generate_series(1, :n) AS i
"""


def timed(label: str, fn: Callable[[Session], object], sessions: Callable[[], Session], repeat: int = 20) -> float:
    samples = []
    for _ in range(repeat):
        with sessions() as session:
            started = time.perf_counter()
            fn(session)
            samples.append((time.perf_counter() - started) * 1000)
            session.rollback()  # measured, not kept: every repeat sees the same table
    median = statistics.median(samples)
    print(f"{label:<58} {median:8.2f} ms (median of {repeat})")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queries", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the jobs table")
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN ANALYZE of each statement")
    args = parser.parse_args()
    url, name = create_postgres_database()
    try:
        upgrade(url)
        sessions = session_factory(url)
        started = time.perf_counter()
        with sessions.begin() as session:
            session.execute(text(FILL), {"n": args.rows})
        with make_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))
        print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.1f}s\n")
        with sessions() as session:
            some_id = session.execute(text("SELECT id FROM jobs OFFSET :o LIMIT 1"), {"o": args.rows // 2}).scalar_one()
            batch = list(session.execute(text("SELECT id FROM jobs WHERE status = 'queued' LIMIT 32")).scalars())
        week_ago = utcnow() - timedelta(days=7)
        timed("poll one job by id (Client.get)", lambda s: store.get_job(s, job_id=some_id), sessions)
        timed("list newest 50 failed sentiment jobs (GET /v1/jobs)",
              lambda s: store.list_jobs(s, status=JobStatus.FAILED, model="sentiment", limit=50), sessions)
        timed("claim a batch of 32 (one UPDATE ... RETURNING)",
              lambda s: store.claim_jobs(s, ids=batch, model="sentiment", worker="bench",
                                         lease=timedelta(seconds=60), max_attempts=3), sessions)
        timed("sweeper: jobs to re-publish",
              lambda s: store.jobs_to_republish(s, stale_after=timedelta(seconds=60), limit=1000), sessions)
        timed("count by status (textq status)", store.count_by_status, sessions, repeat=5)
        hour_ago = utcnow() - overview.WINDOW
        models = ["sentiment", "zero-shot", "summarize"]
        timed("overview: oldest queued job per model (/metrics)", lambda s: overview.oldest_queued(s, models=models), sessions)
        timed("overview: queued and running per model", overview.unfinished_counts, sessions)
        timed("overview: finished per model and status, last hour",
              lambda s: overview.finished_counts(s, since=hour_ago), sessions)
        timed("overview: jobs/s and p50/p95 per minute, last 30 min",
              lambda s: overview.minute_stats(s, since=utcnow() - timedelta(minutes=30)), sessions)
        timed("overview: failed jobs grouped by model and error type", overview.failure_groups, sessions)
        timed("purge a batch of 10,000 finished jobs older than 7 days",
              lambda s: store.purge_jobs(s, finished_before=week_ago, limit=10_000), sessions, repeat=5)
        if args.plans:
            with sessions() as session:
                for label, sql in (
                    ("list", "SELECT * FROM jobs WHERE status = 'failed' AND model = 'sentiment' "
                             "ORDER BY created_at DESC, id DESC LIMIT 50"),
                    ("purge", "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled', 'expired') "
                              "AND finished_at < now() - interval '7 days' ORDER BY finished_at LIMIT 10000"),
                    ("sweep", "SELECT id FROM jobs WHERE (status = 'queued' AND published_at < now() - interval '60 seconds') "
                              "OR (status = 'running' AND lease_until < now()) ORDER BY priority, created_at LIMIT 1000"),
                ):
                    plan = session.execute(text(f"EXPLAIN ANALYZE {sql}")).scalars().all()
                    print(f"\n{label}:\n  " + "\n  ".join(plan))

    finally:
        shared_engine(url).dispose()
        shared_engine.cache_clear()
        drop_postgres_database(name)


if __name__ == "__main__":
    main()
