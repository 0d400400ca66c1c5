"""What an operator sees of the running workers: one view per row of the workers table."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy.orm import Session

from db import workers
from db.models import utcnow


class WorkerView(BaseModel):
    """A worker as its last heartbeat described it."""

    name: str
    host: str
    pid: int
    models: list[str]
    state: str
    started_at: datetime
    last_seen: datetime
    # Seconds between the last heartbeat and this read: a few heartbeat intervals at most while it lives.
    heartbeat_age_s: float
    jobs_in_hand: int


def worker_views(session: Session) -> list[WorkerView]:
    """Every worker in the workers table, by name, dead ones included until a sweeper removes them."""
    now = utcnow()
    return [
        WorkerView(name=w.name, host=w.host, pid=w.pid, models=list(w.models), state=w.state, started_at=w.started_at,
                   last_seen=w.last_seen, heartbeat_age_s=(now - w.last_seen).total_seconds(), jobs_in_hand=w.jobs_in_hand)
        for w in workers.list_workers(session)
    ]


__all__ = ["WorkerView", "worker_views"]
