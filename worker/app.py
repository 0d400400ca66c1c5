"""The Celery app: `celery -A worker.app worker` (or `textq worker`) starts a textq worker.

Celery runs the process (start-up, signals, logging, remote control, broker reconnection); jobs
arrive on one queue per model, read by `worker.consumer.JobConsumer`. JSON only, no result backend:
the jobs table is the source of truth.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# Read by GNU OpenMP when torch loads it (worker.consumer imports torch, below). By default an idle
# OpenMP thread spins ~300,000 times before it sleeps: after every batch that is milliseconds of a
# core taken from the consumer and the database. 10,000 still bridges the gaps inside a forward
# pass. Measured on 2 cores, 3 rounds: bulk 277 vs 270 jobs/s, one job per request 168 vs 151.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from celery import Celery, signals
from kombu.entity import Queue

from producer.broker import broker_config
from producer.registry import default_registry
from producer.settings import producer_settings
from worker.consumer import JobConsumer, redis_transport_for
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

CELERY_TASKS_QUEUE = "textq.celery"

WorkerSettings().served_models(default_registry().names())  # fail at start on an unknown model

app = Celery("textq")
app.conf.update(
    broker_config(producer_settings()),
    broker_transport=redis_transport_for(producer_settings().broker_url),  # drops undecodable messages
    worker_pool="threads",
    # No Celery task runs here (see JobConsumer), so one pool thread is enough.
    worker_concurrency=1,
    # Jobs arrive on the model queues, read by worker.consumer.JobConsumer, not by Celery's task
    # consumer: it gets a queue of its own that textq never sends to.
    task_queues=[Queue(CELERY_TASKS_QUEUE)],
    task_default_queue=CELERY_TASKS_QUEUE,
    worker_hijack_root_logger=True,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@signals.after_setup_logger.connect
def _quiet_per_task_logs(**_: Any) -> None:
    # "Task received" / "succeeded" lines for every message cost measurable CPU at thousands of
    # messages a second; the jobs table and the metrics already say what happened to each job.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.worker_init.connect
def _load_models(sender: Any = None, **_: Any) -> None:
    # The threads pool does not fork: loading here, before consuming, means the first job does not
    # pay for it. Under prefork this is skipped and each child loads lazily after its fork.
    pool = str(getattr(sender, "pool_cls", "")).lower()
    if "thread" in pool or "solo" in pool:
        from worker.runtime import get_runtime

        get_runtime()


@signals.worker_shutdown.connect
def _drain(**_: Any) -> None:
    from worker.runtime import stop_runtime

    stop_runtime()


app.steps["consumer"].add(JobConsumer)
