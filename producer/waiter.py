"""Long polls that hold no thread: the gateway's `?wait=S` waits on an asyncio event per job.

One Redis pub/sub connection per app listens on the finish channels (producer.notify) of the jobs
being waited for and wakes their waiters; a re-read of every waited job in one query each
`recheck_s` covers notifications that were lost (a Redis restart, a broker that is not Redis).
Rows are read in short worker-thread calls, never held across the wait.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager, suppress

import anyio
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from producer.contract import JobView
from producer.notify import CHANNEL_PREFIX, channel

log = logging.getLogger(__name__)

RECONNECT_S = 1.0
REDIS_TIMEOUT_S = 5.0

FinishedAmong = Callable[[Sequence[uuid.UUID]], Collection[uuid.UUID]]


class FinishWaiter:
    """Waits for jobs to finish, for any number of concurrent long polls, without a thread each.

    `finished_among(ids)` is a blocking read (run in a worker thread) saying which of `ids` are
    finished; it is called for all waited jobs together, once every `recheck_s`. Starts on first
    use in the running event loop; `close()` (at the app's shutdown) stops it.
    """

    def __init__(self, broker_url: str, finished_among: FinishedAmong, *, recheck_s: float = 1.0) -> None:
        self._broker_url = broker_url
        self._finished_among = finished_among
        self._recheck_s = recheck_s
        self._waiting: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._subscribed: set[uuid.UUID] = set()  # what the current pub/sub connection was asked for
        self._someone_left = False  # a job lost its last waiter: the listener unsubscribes it
        self._redis: aioredis.Redis | None = None
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        """How many jobs have a waiter now."""
        return len(self._waiting)

    async def wait(self, job_id: uuid.UUID, read: Callable[[], JobView], timeout: float) -> JobView:
        """The job once it is finished, or as it is after `timeout` s; `read` reads its row (blocking)."""
        deadline = anyio.current_time() + timeout
        # Watched before the first read, so that a finish between the two is not missed.
        async with self._watching(job_id) as finished:
            view = await anyio.to_thread.run_sync(read)
            while not view.done and (left := deadline - anyio.current_time()) > 0:
                with anyio.move_on_after(left):
                    await finished.wait()
                finished.clear()
                view = await anyio.to_thread.run_sync(read)
        return view

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._drop_connection()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- waiters ----------------------------------------------------------------------------
    @asynccontextmanager
    async def _watching(self, job_id: uuid.UUID) -> AsyncIterator[asyncio.Event]:
        """An event set when the job finishes (or may have), for as long as the block runs."""
        self._start()
        finished = asyncio.Event()
        waiters = self._waiting.setdefault(job_id, set())
        waiters.add(finished)
        try:
            await self._subscribe(job_id)
            yield finished
        finally:
            # No await here: a cancelled long poll (its client went away) must still leave nothing
            # behind. The listener unsubscribes jobs nobody waits for.
            waiters.discard(finished)
            if not waiters:
                del self._waiting[job_id]
                self._someone_left = True

    def _wake(self, job_id: uuid.UUID) -> None:
        for finished in self._waiting.get(job_id, ()):
            finished.set()

    # -- background tasks ---------------------------------------------------------------------
    def _start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._recheck(), name="textq-wait-recheck"))
        try:
            # No retries inside redis-py: a waiter's subscribe must fail at once, never stall its wait;
            # the listener reconnects by itself.
            self._redis = aioredis.Redis.from_url(self._broker_url, socket_timeout=REDIS_TIMEOUT_S,
                                                  socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        except ValueError:  # not a Redis broker: no notifications, the re-reads alone wake waiters
            log.info("broker is not Redis: long polls re-read jobs every %gs", self._recheck_s)
            return
        self._tasks.append(asyncio.create_task(self._listen(), name="textq-wait-listener"))

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(self._recheck_s)
            ids = list(self._waiting)
            if not ids:
                continue
            try:
                finished = await anyio.to_thread.run_sync(self._finished_among, ids)
            except Exception as exc:  # the database may be down: each waiter's own read reports it
                log.warning("re-reading %d waited jobs failed: %s", len(ids), type(exc).__name__)
                continue
            for job_id in finished:
                self._wake(job_id)

    async def _listen(self) -> None:
        """Reads finish notifications; after a Redis error, reconnects and subscribes again."""
        failed = False
        while True:
            try:
                pubsub = await self._connect()
                if failed:
                    log.info("finish notifications are back")
                    failed = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._recheck_s)
                    if message is not None:
                        self._wake_channel(message["channel"])
                    await self._unsubscribe_unwaited(pubsub)
            except (redis.RedisError, OSError) as exc:
                if not failed:
                    log.warning("finish notifications lost (%s); long polls re-read jobs every %gs until Redis is back",
                                type(exc).__name__, self._recheck_s)
                failed = True
                await self._drop_connection()
                await asyncio.sleep(RECONNECT_S)

    async def _connect(self) -> PubSub:
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        await pubsub.connect()  # type: ignore[no-untyped-call]
        # Published before the await below, so that waiters arriving meanwhile subscribe themselves.
        self._pubsub, self._subscribed = pubsub, set(self._waiting)
        if self._subscribed:
            await pubsub.subscribe(*[channel(i) for i in self._subscribed])
        return pubsub

    async def _drop_connection(self) -> None:
        pubsub, self._pubsub, self._subscribed = self._pubsub, None, set()
        if pubsub is not None:
            with suppress(redis.RedisError, OSError):
                await pubsub.aclose()

    async def _subscribe(self, job_id: uuid.UUID) -> None:
        pubsub = self._pubsub
        # Only on a live connection (never connect here); (re)connecting subscribes every waited job.
        if pubsub is None or pubsub.connection is None or not pubsub.connection.is_connected or job_id in self._subscribed:
            return
        self._subscribed.add(job_id)
        with suppress(redis.RedisError, OSError):  # the listener sees the broken connection and reconnects
            await pubsub.subscribe(channel(job_id))

    async def _unsubscribe_unwaited(self, pubsub: PubSub) -> None:
        if not self._someone_left:
            return
        self._someone_left = False
        # Marked unsubscribed before the command is sent: a waiter arriving meanwhile subscribes again
        # after it (commands on one connection keep their order).
        unwaited = [i for i in self._subscribed if i not in self._waiting]
        if unwaited:
            self._subscribed.difference_update(unwaited)
            await pubsub.unsubscribe(*[channel(i) for i in unwaited])

    def _wake_channel(self, name: bytes | str) -> None:
        text = name.decode() if isinstance(name, bytes) else name
        with suppress(ValueError):  # not a job's channel: nothing to wake
            self._wake(uuid.UUID(text.removeprefix(CHANNEL_PREFIX)))


__all__ = ["FinishWaiter"]
