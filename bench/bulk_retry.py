"""`python -m bench.bulk_retry`: a bulk retry of N failed jobs (default 1,000,000) on PostgreSQL, as
`textq retry --status failed` runs it (Client.retry_matching: a count, then batches of
TEXTQ_RETRY_BATCH_SIZE put back and published): wall time, jobs per second, and the Redis messages."""

from __future__ import annotations

import argparse
import time

import redis
from sqlalchemy import text

from db import upgrade
from db.engine import make_engine, shared_engine
from producer import Client
from tests.services import create_postgres_database, drop_postgres_database, fresh_redis_db, release_redis_db

FILL = """
INSERT INTO jobs (id, model, task, status, input, error_type, error_message, attempts, priority,
                  created_at, finished_at, published_at, publish_count)
SELECT md5(i::text)::uuid, (ARRAY['sentiment', 'zero-shot', 'summarize'])[1 + i % 3], 'classify', 'failed',
       jsonb_build_object('text', 'review ' || i || ' of a product'), 'ValueError', 'it went wrong', 3, 5,
       now() - make_interval(secs => (:n - i) * 1.0), now() - make_interval(secs => (:n - i) * 1.0),
       now() - make_interval(secs => (:n - i) * 1.0), 1
FROM generate_series(1, :n) AS i
"""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_retry", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="failed jobs to retry")
    parser.add_argument("--batch-size", type=int, default=None, help="jobs per transaction (default: the setting)")
    args = parser.parse_args()
    url, name = create_postgres_database()
    broker_url = fresh_redis_db()
    try:
        upgrade(url)
        with make_engine(url).begin() as conn:
            conn.execute(text(FILL), {"n": args.rows})
        with make_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))
        with Client(database_url=url, broker_url=broker_url) as client:
            started = time.perf_counter()
            counted = client.retry_matching(dry_run=True)
            dry_s = time.perf_counter() - started
            started = time.perf_counter()
            done = client.retry_matching(batch_size=args.batch_size)
            wall_s = time.perf_counter() - started
            queued = client.count_by_status().get("queued", 0)
            messages = sum(client.publisher.queue_depth(m) for m in ("sentiment", "zero-shot", "summarize"))
        print(f"dry run: {counted.matched:,} match in {dry_s * 1000:.0f} ms")
        print(f"{done.describe()} in {wall_s:.1f} s ({done.retried / wall_s:,.0f} jobs/s); "
              f"{queued:,} rows queued, {messages:,} messages on Redis")
    finally:
        shared_engine.cache_clear()
        drop_postgres_database(name)
        redis.Redis.from_url(broker_url).flushdb()  # the retried jobs' messages: nobody will take them
        release_redis_db(broker_url)


if __name__ == "__main__":
    main()
