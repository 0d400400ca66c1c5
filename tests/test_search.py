"""Text search over jobs (the console's "text contains"): each page reads a window of jobs newest
first, so a page may be short or empty and still lead further back, and nothing is found twice."""

from __future__ import annotations

from sqlalchemy import text

from producer import Client
from tests.conftest import new_backend

# Job i was created i seconds before the newest; a few hold the needle, in another case each time.
NEEDLES = {3: "a Needle here", 150: "NEEDLE", 420: "needle!", 999: "the oldest needle"}
_JOBS_BY_SQL = """
INSERT INTO jobs (id, model, task, status, input, attempts, priority, created_at, publish_count, retried_attempts)
SELECT gen_random_uuid(), 'echo', 'classify', 'queued', jsonb_build_object('text', 'job ' || i || ' ' || t), 0, 5,
       now() - make_interval(secs => i), 0, 0
FROM (SELECT i, CASE i WHEN 3 THEN :n3 WHEN 150 THEN :n150 WHEN 420 THEN :n420 WHEN 999 THEN :n999
                       WHEN 500 THEN 'a 100% sure job' ELSE 'plain' END AS t
      FROM generate_series(0, 999) AS i) AS texts
"""


def _index(view_text: str) -> int:
    return int(view_text.split()[1])


def test_a_text_search_reads_a_window_per_page_and_goes_further_back() -> None:
    with new_backend("postgresql", "search") as pg, Client(database_url=pg.database_url, broker_url=pg.broker_url) as client:
        with client.sessions.begin() as session:
            session.execute(text(_JOBS_BY_SQL), {f"n{i}": t for i, t in NEEDLES.items()})
        client.search_window = 200
        pages, cursor = [], None
        while True:
            page = client.list_jobs(text_contains="needle", limit=2, cursor=cursor)
            pages.append([_index(v.input["text"]) for v in page.jobs])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        # Windows of 200 from each page's start: [0, 150] fills the page of 2; (150, 350] has none;
        # (350, 550] has 420; then (550, 750], (750, 950], and (950, 999] ends the table.
        assert pages == [[3, 150], [], [420], [], [], [999]]

        whole = client.list_jobs(text_contains="needle", limit=50)  # the window reaches back to 199
        assert [_index(v.input["text"]) for v in whole.jobs] == [3, 150] and whole.next_cursor is not None
        client.search_window = 1000
        percent = client.list_jobs(text_contains="0% s", limit=50)  # % is a character, not a wildcard
        assert [v.input["text"] for v in percent.jobs] == ["job 500 a 100% sure job"] and percent.next_cursor is None
