"""The naive baseline, NOT part of textq: a hand-wired Celery task, one text per message (docs/benchmarks.md)."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from celery import Celery, signals
from sqlalchemy import Engine, insert, update

from db.engine import make_engine
from db.models import Job, JobStatus, utcnow

QUEUE = "bench.naive"
TASK = "bench.naive.predict"

app = Celery("bench-naive", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("TEXTQ_BROKER_URL", "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
)

_model: Any = None
_engine: Engine | None = None
_load_lock = threading.Lock()
# Fast tokenizers are not thread-safe ("Already borrowed"): with a threads pool, one call at a time.
_predict_lock = threading.Lock()


def _load() -> tuple[Any, Engine]:
    global _model, _engine
    with _load_lock:
        if _model is None:
            import torch

            from producer.registry import default_registry
            from worker.runners import create_runner
            from worker.settings import WorkerSettings

            torch.set_num_threads(WorkerSettings().torch_threads)
            runner = create_runner(default_registry().get(os.environ["BENCH_NAIVE_MODEL"]))
            runner.setup()
            _model, _engine = runner, make_engine()
    assert _engine is not None
    return _model, _engine


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _load_at_start(**_: Any) -> None:
    _load()


@app.task(name=TASK)  # type: ignore[untyped-decorator]
def predict(job_id: str, text: str) -> None:
    from producer.contract import INPUT_OF_TASK

    runner, engine = _load()
    started = utcnow()
    job_input = INPUT_OF_TASK[runner.spec.task](text=text)
    with _predict_lock:
        output = runner.predict([job_input])[0]
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(status=JobStatus.SUCCEEDED.value, output=output, attempts=1, started_at=started, finished_at=utcnow())
        )


class NaiveProducer:
    """What the web backend does in the hand-wired setup: INSERT a row, send one message."""

    def __init__(self, database_url: str, broker_url: str, model: str, task: str) -> None:
        app.conf.broker_url = broker_url  # before this process's first send
        self.engine = make_engine(database_url)
        self.model = model
        self.task = task

    def submit(self, text: str) -> uuid.UUID:
        job_id = uuid.uuid4()
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(insert(Job).values(
                id=job_id, model=self.model, task=self.task, status=JobStatus.QUEUED.value, input={"text": text},
                priority=5, attempts=0, created_at=now, published_at=now, publish_count=1,
            ))
        app.send_task(TASK, args=[str(job_id), text], queue=QUEUE)
        return job_id

    def close(self) -> None:
        self.engine.dispose()
