"""Queue depth and oldest queued age on the gateway's /metrics, and the overview's counts, against
real Redis and databases (an isolated backend: no worker takes the jobs)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from producer import Client
from producer.gateway import GatewaySettings, create_app
from tests.conftest import Backend
from tests.helpers import unique_text


@pytest.fixture()
def idle_client(isolated_backend: Backend) -> Iterator[Client]:
    with Client(database_url=isolated_backend.database_url, broker_url=isolated_backend.broker_url) as c:
        yield c


def _gauge(body: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{model="{model}"}} (\S+)$', body, re.MULTILINE)
    assert match is not None, f"{name} for {model} not in /metrics"
    return float(match[1])


def test_metrics_export_each_models_queue_depth_and_oldest_queued_age(idle_client: Client) -> None:
    for _ in range(3):  # one message each (a submit_many call sends its jobs in shared messages)
        idle_client.submit({"text": unique_text(), "model": "echo"})
    app = create_app(idle_client, GatewaySettings(keys=["k"], metrics="open"))
    with TestClient(app) as http:
        body = http.get("/metrics").text
    assert _gauge(body, "textq_queue_depth", "echo") == 3
    assert _gauge(body, "textq_oldest_queued_seconds", "echo") > 0
    assert _gauge(body, "textq_queue_depth", "null") == 0
    assert _gauge(body, "textq_oldest_queued_seconds", "null") == 0


def test_the_overview_counts_what_the_jobs_table_holds(idle_client: Client) -> None:
    jobs = [idle_client.submit({"text": unique_text(), "model": "echo"}) for _ in range(4)]
    idle_client.cancel(jobs[0].id)
    overview = {m.model: m for m in idle_client.overview().models}
    echo = overview["echo"]
    assert (echo.queue_depth, echo.queued, echo.running, echo.succeeded_last_hour) == (4, 3, 0, 0)
    assert echo.oldest_queued_s is not None and echo.oldest_queued_s >= 0
    assert idle_client.failure_groups() == []
