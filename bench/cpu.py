"""Where the machine's CPU went during a run, per job: the producers (this process), the worker,
PostgreSQL, Redis, and everything else (other people's tests on a shared machine)."""

from __future__ import annotations

import os

import psutil

GROUPS = ("producer", "worker", "postgres", "redis", "other")


def _group(proc: psutil.Process, worker: set[int]) -> str | None:
    if proc.pid == os.getpid():
        return "producer"
    if proc.pid in worker:
        return "worker"
    name = proc.name()
    if name.startswith(("postgres", "postmaster")):
        return "postgres"
    if name.startswith(("redis-server", "valkey-server")):
        return "redis"
    return None


def _snapshot(worker_pid: int) -> tuple[dict[int, tuple[str, float]], float]:
    try:
        root = psutil.Process(worker_pid)
        worker = {worker_pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.Error:
        worker = {worker_pid}
    seen: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter():
        try:
            group = _group(proc, worker)
            if group is not None:
                times = proc.cpu_times()
                seen[proc.pid] = (group, times.user + times.system)
        except psutil.Error:
            continue
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return seen, busy


class CpuMeter:
    """`with CpuMeter(worker_pid) as cpu:` ... then `cpu.ms_per_job(n)`."""

    def __init__(self, worker_pid: int) -> None:
        self.worker_pid = worker_pid
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start, self._busy = _snapshot(self.worker_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        end, busy = _snapshot(self.worker_pid)
        totals = dict.fromkeys(GROUPS, 0.0)
        for pid, (group, seconds) in end.items():
            before = self._start.get(pid)
            # A process that started during the run (e.g. a new PostgreSQL backend) counts in full.
            totals[group] += seconds - (before[1] if before and before[0] == group else 0.0)
        totals["other"] = max(busy - self._busy - sum(totals.values()), 0.0)
        self.seconds = totals

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        return {g: round(1000 * s / max(jobs, 1), 2) for g, s in self.seconds.items()}
