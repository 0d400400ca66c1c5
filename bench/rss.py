"""Peak resident memory of a process and its children, sampled in a background thread."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    def __init__(self, pid: int, interval_s: float = 0.1, children_every: int = 20, children: bool = True) -> None:
        self.process = psutil.Process(pid)
        self.with_children = children
        self.interval_s = interval_s
        # Listing children scans every process on the machine: do it now and then, not each sample.
        self.children_every = children_every
        self.peak_bytes = 0
        self._samples = 0
        self._children: list[psutil.Process] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def sample(self) -> int:
        if self.with_children and self._samples % self.children_every == 0:
            self._children = self.process.children(recursive=True)
        self._samples += 1
        total = 0
        for proc in [self.process, *self._children]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a child that just exited
                continue
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except psutil.Error:
                return

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20
