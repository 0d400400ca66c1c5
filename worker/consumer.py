"""The job consumer: a Celery consumer step that reads the model queues and hands each message's
job ids straight to the model's batcher, and the Redis transport it reads them with.

Messages are consumed without an ack (`no_ack`): the jobs table, not the message, keeps a job safe
(the sweeper re-publishes the jobs of a message lost with its worker). While a batcher is full,
`hand_in` blocks, so the consumer stops reading and messages wait on Redis for other workers.
Anything on a model queue that is not a textq message is dropped with one log line.
"""

from __future__ import annotations

import logging
from functools import cached_property
from queue import Empty
from typing import Any
from urllib.parse import urlsplit

from celery import bootsteps
from kombu.message import Message
from kombu.messaging import Consumer
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Channel
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.commands.core import Script

from producer.broker import model_queue
from producer.wire import MalformedMessageError, parse_message
from worker.runtime import ModelNotServedError

__all__ = ["JobConsumer", "redis_transport_for"]

log = logging.getLogger(__name__)


class JobConsumer(bootsteps.ConsumerStep):
    """Consumes the served models' queues on the worker's broker connection (restarted with it)."""

    # Start where Celery starts its own task consumer: after mingle, which drains the connection
    # while it looks for neighbours and would otherwise run jobs before the worker is ready.
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def get_consumers(self, channel: Channel) -> list[Consumer]:
        from worker.runtime import get_runtime  # started at celeryd_after_setup, before the consumer

        self.runtime = get_runtime()
        queues = [model_queue(m) for m in self.runtime.models]
        if isinstance(channel, DroppingRedisChannel):
            channel.drained_queues = frozenset(q.name for q in queues)
        return [Consumer(channel, queues=queues, on_message=self.on_message, accept=["json"], no_ack=True)]

    def on_message(self, message: Message) -> None:
        try:
            job_message = parse_message(message)
        except MalformedMessageError as exc:
            log.error("dropped a message: %s", exc)
            return
        try:
            self.runtime.hand_in(job_message.model, job_message.job_ids)
        except ModelNotServedError as exc:  # misrouted: its jobs stay queued for the sweeper to re-route
            log.error("dropped a message: %s", exc)


# The Lua script that pops the next message in BRPOP's order (the first of KEYS that is not empty),
# without blocking: [key, message] or nil. One round trip, on any Redis since 2.6.
_POP_NEXT = """
for _, key in ipairs(KEYS) do
  local item = redis.call('RPOP', key)
  if item then return {key, item} end
end
return nil
"""
# At most this many messages are taken per BRPOP wake-up (the event loop still gets its turn).
DRAIN_MAX_MESSAGES = 256


class DroppingRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that a message it cannot decode is dropped with one log line,
    and that each BRPOP is followed by popping the messages already waiting behind it.

    kombu decodes what BRPOP pops (JSON envelope, body encoding) before any consumer sees it, and
    an error there stopped the worker. `_brpop_read` is every path a popped message takes: the
    poller's (one BRPOP over all queues and priority lists) and the read a closing channel finishes.

    Draining: one BRPOP and a turn of Celery's event loop per message took 7% of a worker's py-spy
    samples under one job per request, most in sending the BRPOP (docs/backends.md). Waiting messages
    are popped in BRPOP's order (priority first) with one script call each and delivered the way
    kombu delivers them, one at a time: delivery blocks in `hand_in` while the batcher is full, so a
    worker never holds more messages out of other workers' reach than BRPOP alone would make it.
    Only the model queues are drained (`drained_queues`, set by the consumer, which reads them with
    no_ack); Celery's own queue keeps kombu's prefetch accounting.
    """

    drained_queues: frozenset[str] = frozenset()

    def _brpop_read(self, **options: Any) -> bool:
        try:
            delivered = bool(super()._brpop_read(**options))
        except Exception as exc:  # whatever decoding raised: JSON, UTF-8, base64, missing keys, kombu's type hooks
            self._drop_unless_transport_error(exc)
            return True
        if delivered:
            self._drain()
        return delivered

    def _drop_unless_transport_error(self, exc: Exception) -> None:
        """Re-raise an error of the connection (kombu reconnects); log any other as a dropped message."""
        # kombu counts KeyError a connection error (for a stale fd); here it is an envelope missing a key.
        if isinstance(exc, Empty) or (isinstance(exc, self.connection_errors) and not isinstance(exc, KeyError)):
            raise exc
        log.error("dropped a message kombu could not read: %.200r", exc)

    @cached_property
    def _pop_next(self) -> Script:
        # Registered once: each call sends the script's hash (EVALSHA), not its text.
        return Script(self.client, _POP_NEXT)

    def _drain(self) -> None:
        # Not while closing (its last BRPOP's message is delivered, no more), nor with prefixed keys.
        if self._closing or self.global_keyprefix:
            return
        queues = [queue for queue in self.active_queues if queue in self.drained_queues]
        if not queues:
            return
        keys = [self._q_for_pri(queue, priority) for priority in self.priority_steps for queue in queues]
        for _ in range(DRAIN_MAX_MESSAGES):
            try:
                popped = self._pop_next(keys=keys, client=self.client)
            except self.connection_errors:
                return  # kombu's next BRPOP meets the same error and reconnects
            if not popped:
                return
            key, item = popped
            try:
                self.connection._deliver(loads(bytes_to_str(item)), bytes_to_str(key).rsplit(self.sep, 1)[0])
            except Exception as exc:
                self._drop_unless_transport_error(exc)


class DroppingRedisTLSChannel(DroppingRedisChannel):
    # kombu turns TLS on for a rediss:// URL by its scheme, which a transport class given by name hides.
    connection_class = kombu_redis.Channel.connection_class_ssl  # type: ignore[assignment]  # an SSLConnection is a Connection


class DroppingRedisTransport(kombu_redis.Transport):
    Channel = DroppingRedisChannel


class DroppingRedisTLSTransport(kombu_redis.Transport):
    Channel = DroppingRedisTLSChannel


def redis_transport_for(broker_url: str) -> str | None:
    """The kombu transport a worker reads `broker_url` with (None: kombu's own, by the URL's scheme)."""
    return {
        "redis": f"{__name__}:DroppingRedisTransport",
        "rediss": f"{__name__}:DroppingRedisTLSTransport",
    }.get(urlsplit(broker_url).scheme)
