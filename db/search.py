"""Searching job texts ("text contains"), newest first, a bounded window of jobs per page.

No index serves a substring of a JSON text: a search reads rows. Unbounded, a rare needle read the
whole table (0.5 s on a million rows) and a common one made PostgreSQL pick a full scan and a sort
(1 s, see docs/console/queries.md). So a page reads at most `window` jobs, those the other filters
leave, newest first from its cursor, and returns the matches among them; when it finds fewer than
asked, its next position is the end of the window, and the next page searches further back. A page
may then hold fewer jobs than its limit (or none) and still have a next page. A trigram index would
answer without a window, at a cost on every insert and an extension to install.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from db.listing import JobFilter, PagePosition, newest_first, time_limit
from db.models import Job

SEARCH_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class SearchPage:
    jobs: list[Job]
    # Where the next page's window starts when this one ended before finding `limit` jobs; None: the last page.
    resume_after: PagePosition | None


def search_jobs(
    session: Session,
    *,
    text: str,
    matching: JobFilter,
    after: PagePosition | None = None,
    limit: int = 50,
    window: int = SEARCH_WINDOW,
    time_limit_s: float | None = None,
) -> SearchPage:
    """Up to `limit` jobs whose text contains `text` (case-insensitive), among the `window` newest jobs
    that match the other filters after `after`."""
    candidates = newest_first(matching, after=after)
    # The LIMIT inside keeps the planner on the (created_at, id) index: the text test cannot move in.
    scanned = aliased(Job, candidates.limit(window).subquery("scanned"))
    stmt = (select(scanned).where(func.lower(scanned.input["text"].as_string()).contains(text.lower(), autoescape=True))
            .order_by(scanned.created_at.desc(), scanned.id.desc()).limit(limit))
    with time_limit(session, time_limit_s):
        jobs = list(session.scalars(stmt).all())
        if len(jobs) == limit:
            return SearchPage(jobs, PagePosition(jobs[-1].created_at, jobs[-1].id))
        # The window's last job, and whether any job lies beyond it (else this was the last page).
        edge = session.execute(candidates.with_only_columns(Job.created_at, Job.id)
                               .offset(window - 1).limit(2)).all()
    return SearchPage(jobs, PagePosition(*edge[0]) if len(edge) == 2 else None)


__all__ = ["SEARCH_WINDOW", "SearchPage", "search_jobs"]
