"""The Celery app: `celery -A worker.app worker` (or `textq worker`) starts a textq worker.

Celery runs the process (start-up, signals, logging, remote control, broker reconnection); jobs
arrive on one queue per model, read by `worker.consumer.JobConsumer`. JSON only, no result backend:
the jobs table is the source of truth. Importing this module only configures the app; the worker's
runtime (database, models) starts when the worker starts, before it says ready.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from kombu.entity import Queue

from producer.broker import broker_config
from producer.errors import TextqError
from producer.settings import producer_settings
from worker.consumer import JobConsumer, redis_transport_for

log = logging.getLogger(__name__)

CELERY_TASKS_QUEUE = "textq.celery"

app = Celery("textq")
app.conf.update(
    broker_config(producer_settings()),
    broker_transport=redis_transport_for(producer_settings().broker_url),  # drops undecodable messages
    worker_pool="threads",
    # No Celery task runs here (see JobConsumer), so one pool thread is enough.
    worker_concurrency=1,
    # Jobs arrive on the model queues, read by JobConsumer: Celery's task consumer gets a queue textq never sends to.
    task_queues=[Queue(CELERY_TASKS_QUEUE)],
    task_default_queue=CELERY_TASKS_QUEUE,
    worker_hijack_root_logger=True,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@signals.after_setup_logger.connect
def _quiet_per_task_logs(**_: Any) -> None:
    # Per-message "received"/"succeeded" lines cost CPU at thousands of messages a second.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


@signals.celeryd_after_setup.connect
def _start_runtime(**_: Any) -> None:
    """Start the runtime once logging is set up and before the consumer: a worker that cannot serve
    exits 1 with one line instead of saying ready (the consumer would retry it forever)."""
    from worker.runtime import get_runtime

    try:
        get_runtime()
    except (TextqError, ValueError) as exc:  # what the operator must fix, named in the message
        log.error("worker not started: %s", exc)
        raise SystemExit(1) from None
    except Exception:  # a bug: the traceback helps
        log.exception("worker not started")
        raise SystemExit(1) from None


@signals.worker_shutdown.connect
def _drain(**_: Any) -> None:
    from worker.runtime import stop_runtime

    stop_runtime()


app.steps["consumer"].add(JobConsumer)
