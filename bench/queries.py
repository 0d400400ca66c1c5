"""`python -m bench.queries`: the jobs table's hot queries on a table of N rows (default 1,000,000)
in a fresh PostgreSQL database: median timings, and with --plans the EXPLAIN ANALYZE of every
statement each one sends, to check that indexes keep polling, listing, sweeping, purging and the
console fast as the table grows. The console's and overview's queries have a budget of 50 ms."""

from __future__ import annotations

import argparse
import re
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.plans import plans_of
from db import listing, overview, retries, search, store, sweeps, upgrade, workers
from db.engine import make_engine, session_factory, shared_engine
from db.models import JobStatus, utcnow
from tests.services import create_postgres_database, drop_postgres_database

CONSOLE_BUDGET_MS = 50.0
MODELS = ["sentiment", "zero-shot", "summarize"]

# One job a second back from now: 1% queued, 1% running, 2% failed (three error types), the rest
# succeeded; each text unique ("review <i> of a product"), so a text search can match one row.
FILL = """
INSERT INTO jobs (id, model, task, status, input, output, error_type, error_message, attempts, priority,
                  created_at, started_at, finished_at, published_at, publish_count)
SELECT md5(i::text)::uuid,
       (ARRAY['sentiment', 'zero-shot', 'summarize'])[1 + i % 3],
       'classify',
       CASE WHEN i % 100 = 0 THEN 'queued' WHEN i % 100 = 1 THEN 'running' WHEN i % 50 = 2 THEN 'failed' ELSE 'succeeded' END,
       jsonb_build_object('text', 'review ' || i || ' of a product'),
       CASE WHEN i % 100 > 1 AND i % 50 <> 2 THEN '{"label": "positive", "score": 0.9}'::jsonb END,
       CASE WHEN i % 50 = 2 THEN (ARRAY['ValueError', 'OutOfMemoryError', 'TimeoutError'])[1 + (i / 150) % 3] END,
       CASE WHEN i % 50 = 2 THEN 'it went wrong' END,
       1, 5,
       now() - make_interval(secs => (:n - i) * 1.0),
       now() - make_interval(secs => (:n - i) * 1.0),
       CASE WHEN i % 100 > 1 THEN now() - make_interval(secs => (:n - i) * 1.0) END,
       now() - make_interval(secs => (:n - i) * 1.0), 1
FROM generate_series(1, :n) AS i
"""


@dataclass(frozen=True)
class Query:
    label: str
    run: Callable[[Session], object]
    console: bool = False  # the console's or the overview's: held to CONSOLE_BUDGET_MS
    repeat: int = 20


def queries(rows: int, some_id: uuid.UUID, batch: list[uuid.UUID], middle: listing.PagePosition) -> list[Query]:
    now = utcnow()
    hour_ago, week_ago = now - overview.WINDOW, now - timedelta(days=7)
    failed = retries.RetryFilter(model="sentiment", error_type="ValueError")
    return [
        Query("poll one job by id (Client.get, the console's job page)", lambda s: store.get_job(s, job_id=some_id), True),
        Query("list newest 50 failed sentiment jobs (GET /v1/jobs)",
              lambda s: listing.list_jobs(s, status=JobStatus.FAILED, model="sentiment", limit=50), True),
        Query("claim a batch of 32 (one UPDATE ... RETURNING)",
              lambda s: store.claim_jobs(s, ids=batch, model="sentiment", worker="bench",
                                         lease=timedelta(seconds=60), max_attempts=3)),
        Query("sweeper: jobs to re-publish",
              lambda s: sweeps.jobs_to_republish(s, stale_after=timedelta(seconds=60), limit=1000)),
        Query("count by status (textq status)", store.count_by_status, repeat=5),
        Query("purge a batch of 10,000 finished jobs older than 7 days",
              lambda s: store.purge_jobs(s, finished_before=week_ago, limit=10_000), repeat=5),
        # The overview (every refresh) and /metrics.
        Query("overview: oldest queued job per model (/metrics)", lambda s: overview.oldest_queued(s, models=MODELS), True),
        Query("overview: queued and running per model", overview.unfinished_counts, True),
        Query("overview: finished per model and status, last hour",
              lambda s: overview.finished_counts(s, since=hour_ago), True),
        Query("overview: jobs/s and p50/p95 per minute, last 30 min",
              lambda s: overview.minute_stats(s, since=now - timedelta(minutes=30)), True),
        Query("overview: workers", workers.list_workers, True),
        # The jobs page: newest first, each filter, a page deep in the table.
        Query("jobs: newest 50", lambda s: listing.list_jobs(s, limit=50), True),
        Query("jobs: newest 50 failed (the failed page)",
              lambda s: listing.list_jobs(s, status=JobStatus.FAILED, limit=50), True),
        Query("jobs: newest 50 queued", lambda s: listing.list_jobs(s, status=JobStatus.QUEUED, limit=50), True),
        Query("jobs: newest 50 of a model, last hour",
              lambda s: listing.list_jobs(s, model="zero-shot", since=hour_ago, limit=50), True),
        Query("jobs: newest 50 with error type OutOfMemoryError",
              lambda s: listing.list_jobs(s, error_type="OutOfMemoryError", limit=50), True),
        Query("jobs: 50 after a cursor halfway down the table", lambda s: listing.list_jobs(s, after=middle, limit=50), True),
        Query("jobs: text contains 'product' (every job matches)",
              lambda s: search.search_jobs(s, text="product", matching=listing.JobFilter()), True),
        Query(f"jobs: text contains 'review {rows // 2} ' (one job, far back: a page of none)",
              lambda s: search.search_jobs(s, text=f"review {rows // 2} ", matching=listing.JobFilter()), True),
        Query(f"jobs: text contains 'review {rows - 60} ' (one job), last hour",
              lambda s: search.search_jobs(s, text=f"review {rows - 60} ", matching=listing.JobFilter(since=hour_ago)), True),
        # The failed page's groups and a bulk retry's reads and one write batch.
        Query("failed: grouped by model and error type", overview.failure_groups, True),
        Query("retry: count failed sentiment ValueError jobs (dry run)",
              lambda s: retries.count_retryable(s, matching=failed), True),
        Query("retry: next 1,000 ids to retry (keyset)",
              lambda s: retries.retryable_ids(s, matching=retries.RetryFilter(), after=None, limit=1000), True),
        # A write, timed per batch: a bulk retry's pace is rows per second (bench/bulk_retry.py).
        Query("retry: put 1,000 failed jobs back to queued (UPDATE ... RETURNING)",
              lambda s: retries.retry_jobs(s, ids=[i for _, i in retries.retryable_ids(
                  s, matching=retries.RetryFilter(), after=None, limit=1000)]), repeat=5),
    ]


def _shown(statement: str) -> str:
    """The statement on one line, a select list of eight columns or more shortened (the job's page reads them all)."""
    column = r"(\w+)\.\w+(?: AS \w+)?"
    return re.sub(rf"SELECT (?:{column}, ){{7,}}{column} FROM", r"SELECT \1.<every column> FROM", " ".join(statement.split()))


def _clipped(line: str, width: int = 240) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def timed(query: Query, sessions: Callable[[], Session]) -> float:
    samples = []
    for _ in range(query.repeat):
        with sessions() as session:
            started = time.perf_counter()
            query.run(session)
            samples.append((time.perf_counter() - started) * 1000)
            session.rollback()  # measured, not kept: every repeat sees the same table
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queries", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the jobs table")
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN ANALYZE of every statement (markdown)")
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
            middle = listing.PagePosition(*session.execute(
                text("SELECT created_at, id FROM jobs ORDER BY created_at, id OFFSET :o LIMIT 1"), {"o": args.rows // 2}).one())
        over = []
        for query in queries(args.rows, some_id, batch, middle):
            median = timed(query, sessions)
            flag = " OVER BUDGET" if query.console and median > CONSOLE_BUDGET_MS else ""
            over += [query.label] if flag else []
            timing = f"{median:.2f} ms (median of {query.repeat}){flag}"
            print(f"### {query.label}: {timing}" if args.plans else f"{query.label:<72} {timing:>30}")
            if args.plans:
                for statement, plan in plans_of(sessions, query.run):
                    print(f"\n```sql\n{_shown(statement)}\n```\n```\n" + "\n".join(map(_clipped, plan)) + "\n```\n")
        print(f"\nconsole and overview queries over {CONSOLE_BUDGET_MS:g} ms: {', '.join(over) or 'none'}")
    finally:
        shared_engine(url).dispose()
        shared_engine.cache_clear()
        drop_postgres_database(name)


if __name__ == "__main__":
    main()
