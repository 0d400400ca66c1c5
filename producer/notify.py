"""Finish notifications over Redis pub/sub; best effort: waiters still poll, so a lost one costs only latency."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

import redis

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "textq:finished:"


def channel(job_id: uuid.UUID) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


def redis_for(broker_url: str) -> redis.Redis | None:
    """A Redis client for the broker, or None when the broker is not Redis (no notifications)."""
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)


# One script call per batch: far less worker CPU than a PUBLISH per job (docs/design.md).
_PUBLISH_EACH = f"for _, id in ipairs(ARGV) do redis.call('PUBLISH', '{CHANNEL_PREFIX}' .. id, '1') end"


class FinishNotifier:
    """Tells waiters that jobs' rows are final. Call it after the transaction commits."""

    def __init__(self, client: redis.Redis | None) -> None:
        self._publish_each = None if client is None else client.register_script(_PUBLISH_EACH)

    def __call__(self, job_ids: Iterable[uuid.UUID]) -> None:
        ids = [str(i) for i in job_ids]
        if self._publish_each is None or not ids:
            return
        try:
            self._publish_each(args=ids)
        except (redis.RedisError, OSError) as exc:
            log.debug("finish notification not sent (%s); waiters fall back to polling", exc)


class FinishWatcher:
    """Subscribed to some jobs' channels; `wait(t)` returns early when some of them finish."""

    def __init__(self, pubsub: redis.client.PubSub | None) -> None:
        self._pubsub = pubsub

    def wait(self, timeout: float) -> set[uuid.UUID] | None:
        """The jobs whose notifications arrived, once at least one did; None when `timeout` passed
        without any (or there is no Redis to listen to): the caller re-reads every row then."""
        if self._pubsub is None:
            time.sleep(timeout)
            return None
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is not None:
                    # Take whatever else already arrived, then let the caller re-read those rows.
                    channels = []
                    while message is not None:
                        channels.append(message["channel"])
                        message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                    return {job for job in map(_job_of, channels) if job is not None}
        except (redis.RedisError, OSError):
            self._pubsub = None  # broker gone: plain polling from now on
            time.sleep(max(0.0, deadline - time.monotonic()))
        return None


def _job_of(channel_name: bytes | str) -> uuid.UUID | None:
    name = channel_name.decode() if isinstance(channel_name, bytes) else channel_name
    try:
        return uuid.UUID(name.removeprefix(CHANNEL_PREFIX))
    except ValueError:
        return None


@contextmanager
def watch_finished(client: redis.Redis | None, job_ids: Iterable[uuid.UUID]) -> Iterator[FinishWatcher]:
    """Subscribe before the caller reads the rows, so no notification falls in between."""
    if client is None:
        yield FinishWatcher(None)
        return
    try:
        pubsub = client.pubsub()
        pubsub.subscribe(*[channel(i) for i in job_ids])
    except (redis.RedisError, OSError) as exc:
        log.debug("cannot subscribe to finish notifications (%s); polling", exc)
        yield FinishWatcher(None)
        return
    try:
        yield FinishWatcher(pubsub)
    finally:
        with suppress(redis.RedisError, OSError):
            pubsub.close()
