"""Prometheus metrics of a worker process, served on `TEXTQ_METRICS_PORT` when set."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from db.models import utcnow
from db.store import Outcome

JOBS = Counter("textq_jobs_total", "Jobs finished by this worker", ["model", "status"])
BATCH_SIZE = Histogram("textq_batch_size", "Jobs computed per batch", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
QUEUE_WAIT = Histogram("textq_queue_wait_seconds", "Time from submit to claim", ["model"],
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
INFERENCE = Histogram("textq_inference_seconds", "Model time per batch", ["model"],
                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
MODEL_LOAD = Gauge("textq_model_load_seconds", "Seconds the model took to load at start-up", ["model"])


def serve(port: int) -> None:
    start_http_server(port)


def observe_claims(model: str, created: Sequence[datetime]) -> None:
    now = utcnow()
    queue_wait = QUEUE_WAIT.labels(model)  # a labels() lookup per job cost more than the observation
    for created_at in created:
        queue_wait.observe((now - created_at).total_seconds())


def observe_batch(model: str, outcomes: Sequence[Outcome], computed: int, seconds: float) -> None:
    statuses = [o.status.value for o in outcomes]
    for status in set(statuses):
        JOBS.labels(model, status).inc(statuses.count(status))
    if computed:
        BATCH_SIZE.labels(model).observe(computed)
        INFERENCE.labels(model).observe(seconds)
