"""The Celery app: `celery -A worker.app worker` (or `textq worker`) starts a textq worker.

Configured for at-least-once delivery with the jobs table as the source of truth: late acks,
redelivery when a worker dies, JSON only, no result backend, one queue per model.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# Read by GNU OpenMP when torch loads it (worker.tasks imports torch, below). By default an idle
# OpenMP thread spins ~300,000 times before it sleeps: after every batch that is milliseconds of a
# core taken from the consumer and the database. 10,000 still bridges the gaps inside a forward
# pass. Measured on 2 cores, 3 rounds: bulk 277 vs 270 jobs/s, one job per request 168 vs 151.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from celery import Celery, signals

from producer.broker import broker_config, model_queue
from producer.registry import default_registry
from producer.settings import producer_settings
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

settings = WorkerSettings()
served = settings.served_models(default_registry().names())

app = Celery("textq")
config = broker_config(producer_settings())
config["broker_transport_options"] = {
    **config["broker_transport_options"],
    "unacked_restore_interval": settings.unacked_restore_interval_s,
    "unacked_restore_throttle": 1,
}
app.conf.update(
    config,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_pool="threads",
    worker_concurrency=settings.worker_concurrency,
    worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
    task_queues=[model_queue(m) for m in served],
    task_default_queue=model_queue(served[0]).name,
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


import worker.tasks  # noqa: E402,F401  (registers the task on `app`)
