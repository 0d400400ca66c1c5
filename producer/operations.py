"""What operators ask of a running textq: queue depths, live workers, job counts, retention."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta

from db import store
from db.models import utcnow
from producer.client import Client
from producer.workers import WorkerView, worker_views

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """'90s', '30m', '12h', '7d', '2w' → timedelta; ValueError that says the format otherwise."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age: use a number and a unit s, m, h, d or w (e.g. 7d)")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


@dataclass(frozen=True)
class ClusterStatus:
    queue_depths: dict[str, int]
    workers: list[str]
    jobs_by_status: dict[str, int]
    # Each worker's last heartbeat, from the workers table (`workers`: those answering a ping).
    heartbeats: list[WorkerView] = field(default_factory=list)


def ping_workers(client: Client, timeout: float = 1.0) -> list[str]:
    """Names of the workers that answer a Celery ping on the broker."""
    replies = client.publisher.app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def local_worker_alive(client: Client, timeout: float = 2.0) -> bool:
    """Whether a worker on this host answers: the health check of a worker container."""
    host = socket.gethostname()
    return any(name.endswith(f"@{host}") for name in ping_workers(client, timeout))


def cluster_status(client: Client) -> ClusterStatus:
    with client.sessions() as session:
        counts = store.count_by_status(session)
        heartbeats = worker_views(session)
    return ClusterStatus(
        queue_depths={name: client.publisher.queue_depth(name) for name in client.registry.names()},
        workers=ping_workers(client),
        jobs_by_status=counts,
        heartbeats=heartbeats,
    )


def purge_finished(client: Client, older_than: timedelta, batch_size: int = 10_000) -> int:
    """Delete finished jobs that finished more than `older_than` ago, in batches so that one purge
    never holds a long lock on a big table; returns how many rows went."""
    cutoff = utcnow() - older_than
    total = 0
    while True:
        with client.sessions.begin() as session:
            deleted = store.purge_jobs(session, finished_before=cutoff, limit=batch_size)
        total += deleted
        if deleted < batch_size:
            return total
