"""What operators ask of a running textq, built on the Client's public methods: status, ages, health."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from producer.client import Client
from producer.workers import WorkerView

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
    workers: list[WorkerView]
    jobs_by_status: dict[str, int]


def cluster_status(client: Client) -> ClusterStatus:
    return ClusterStatus(
        queue_depths=client.queue_depths(),
        workers=client.workers(),
        jobs_by_status=client.count_by_status(),
    )


__all__ = ["ClusterStatus", "cluster_status", "parse_age"]
