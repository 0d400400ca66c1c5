"""The job consumer: a Celery consumer step that reads the model queues and hands each message's
job ids straight to the model's batcher.

Celery's own task path (a Request per message, the pool, the tracer, a late ack) cost ~2.5 ms of
the worker's CPU per message, about as much as everything else the worker does for a one-job
message. Here a message costs one Redis round trip (BRPOP): it is consumed without an ack
(`no_ack`), because the jobs table, not the message, keeps a job safe. A message whose worker dies
before its ids are handed in leaves its jobs queued, and the sweeper re-publishes them, exactly as
for the ids a dead worker already held in its batcher.

Backpressure: the callback blocks in `hand_in` while the batcher holds its high water of jobs, so
the consumer stops reading; unread messages stay on Redis for other workers.

Messages are Celery task messages (protocol 2: the body is `[args, kwargs, embed]`, `args[0]` the
`JobMessage`, as `producer.broker.task_message` builds them), so Celery tooling can read them.
"""

from __future__ import annotations

import logging

from celery import bootsteps
from kombu.message import Message
from kombu.messaging import Consumer
from kombu.transport.virtual import Channel

from producer.broker import model_queue
from producer.contract import RUN_JOBS_TASK, JobMessage
from worker.runtime import ModelNotServedError

log = logging.getLogger(__name__)


def parse_message(message: Message) -> JobMessage | None:
    """The job message in a Celery task message, or None (logged) if it is not a valid one."""
    task = message.headers.get("task")
    if task != RUN_JOBS_TASK:
        log.error("dropped a message for task %r on a textq queue (expected %s)", task, RUN_JOBS_TASK)
        return None
    try:
        body = message.decode()  # only JSON is accepted: anything else raises before it is parsed
        args = body[0] if isinstance(body, list | tuple) and body else None
        if not isinstance(args, list | tuple) or len(args) != 1:
            raise ValueError(f"expected one argument, the job message; got {args!r:.200}")
        return JobMessage.model_validate(args[0])
    except ValueError as exc:  # a pydantic ValidationError too
        log.error("dropped malformed message: %s", exc)
    except Exception as exc:  # ContentDisallowed (pickle, ...), a decode error
        log.error("dropped undecodable message (%s): %s", message.content_type, exc)
    return None


class JobConsumer(bootsteps.ConsumerStep):
    """Consumes the served models' queues on the worker's broker connection (restarted with it)."""

    # Start where Celery starts its own task consumer: after mingle, which drains the connection
    # while it looks for neighbours and would otherwise run jobs before the worker is ready.
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def get_consumers(self, channel: Channel) -> list[Consumer]:
        from worker.runtime import get_runtime  # started by worker_init, before the consumer

        self.runtime = get_runtime()
        queues = [model_queue(m) for m in self.runtime.models]
        return [Consumer(channel, queues=queues, on_message=self.on_message, accept=["json"], no_ack=True)]

    def on_message(self, message: Message) -> None:
        job_message = parse_message(message)
        if job_message is None:
            return
        try:
            self.runtime.hand_in(job_message.model, job_message.job_ids)
        except ModelNotServedError as exc:  # misrouted: its jobs stay queued for the sweeper to re-route
            log.error("dropped a message: %s", exc)
