"""The tally every fault test prints: submitted / succeeded / failed / lost / duplicated."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select

from db.engine import session_factory
from db.models import Job
from producer.contract import JobView


def tally(database_url: str, views: Sequence[JobView], texts: Sequence[str], computed: Counter[str]) -> dict[str, int]:
    """`lost`: submitted jobs not finished. `duplicated`: extra rows for the same input, plus jobs
    whose result was computed more than once although their first computation was written."""
    with session_factory(database_url)() as session:
        inputs = Counter(str(i.get("text")) for i in session.scalars(select(Job.input)))
    counts = {
        "submitted": len(views),
        "succeeded": sum(v.status == "succeeded" for v in views),
        "failed": sum(v.status == "failed" for v in views),
        "lost": sum(not v.done for v in views),
        "duplicated": sum(inputs[t] - 1 for t in texts)
        + sum(1 for v, t in zip(views, texts, strict=True) if v.attempts == 1 and computed[t] > 1),
    }
    print("\n" + " / ".join(f"{k} {v}" for k, v in counts.items()))
    return counts
