"""Runners for tests, loaded by the worker from `module:Class` specs in the test models file."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import torch

from producer.registry import ModelSpec
from worker.retry import Retry
from worker.runners.base import Runner

POISON = "POISON"


class _TestRunner(Runner):
    def setup(self) -> None:
        self.log = Path(self.spec.options["log"]) if "log" in self.spec.options else None

    def record(self, batch: list[Any]) -> None:
        """Append each computed text to a shared file, one line each: counts computations."""
        if self.log is not None:
            with self.log.open("a") as f:
                f.write("".join(f"{x.text}\n" for x in batch))


class EchoRunner(_TestRunner):
    """Deterministic output (the text's length and upper case), optionally slow per batch."""

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        time.sleep(float(self.spec.options.get("sleep_s", 0)))
        self.record(batch)
        return [{"label": x.text.upper(), "score": 1.0, "chars": len(x.text)} for x in batch]


class PoisonRunner(EchoRunner):
    """Kills its whole process when a batch contains the marker text, like a segfaulting model."""

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        if any(POISON in x.text for x in batch):
            os._exit(1)
        return super().predict(batch)


class MemoryHungryRunner(EchoRunner):
    """Raises CUDA's out-of-memory error class for batches above `options.max_fit` items, and
    always for texts containing "HUGE" (too big even alone)."""

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        if len(batch) > int(self.spec.options.get("max_fit", 4)) or any("HUGE" in x.text for x in batch):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().predict(batch)


class FailingRunner(EchoRunner):
    """A model error on one input ("BAD" in the text), or a length it cannot even estimate
    ("UNSIZABLE"): that job fails, the rest succeed."""

    def estimate_tokens(self, job_input: Any) -> int:
        if "UNSIZABLE" in job_input.text:
            raise ValueError("cannot estimate the length of this input")
        return super().estimate_tokens(job_input)

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        if any("BAD" in x.text for x in batch):
            raise ValueError("model cannot handle this input")
        return super().predict(batch)


class FailOnceRunner(EchoRunner):
    """Fails a text containing "FLAKY" the first time it is computed (by any runner sharing the file
    `options.seen_log`) and succeeds after: a job that an operator's retry brings through."""

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        seen_log = Path(self.spec.options["seen_log"])
        seen = set(seen_log.read_text().splitlines()) if seen_log.exists() else set()
        first = [x.text for x in batch if "FLAKY" in x.text and x.text not in seen]
        if first:
            with seen_log.open("a") as f:
                f.write("".join(f"{text}\n" for text in first))
            raise ValueError(f"first try of {first[0][:40]} fails")
        return super().predict(batch)


class ThreadReportingRunner(_TestRunner):
    """Says which thread loaded it and which runs it (torch work must stay in one thread)."""

    def setup(self) -> None:
        super().setup()
        self.loaded_in = threading.current_thread().name
        self.torch_threads = torch.get_num_threads()

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        return [
            {"label": "ok", "loaded_in": self.loaded_in, "runs_in": threading.current_thread().name,
             "torch_threads": self.torch_threads, "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}
            for _ in batch
        ]


class BatchRecordingRunner(EchoRunner):
    """Keeps each batch's texts and when it ran (time.monotonic), for in-process tests."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.batches: list[tuple[float, list[str]]] = []

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        self.batches.append((time.monotonic(), [x.text for x in batch]))
        return super().predict(batch)


class GatedRunner(BatchRecordingRunner):
    """Sets `started` when a batch begins and holds it until the test sets `gate`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.started = threading.Event()
        self.gate = threading.Event()

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        self.started.set()
        self.gate.wait(30)
        return super().predict(batch)


class SteppedRunner(BatchRecordingRunner):
    """Runs one batch per `step.release()` from the test (waits at most 30 s for it)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.step = threading.Semaphore(0)

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        self.step.acquire(timeout=30)
        return super().predict(batch)


class RetryingRunner(BatchRecordingRunner):
    """Raises `Retry` for a batch with "RETRY" in a text, with the delay a "DELAY=<seconds>" in that
    text names (none: the policy's backoff). A text with "ONCE" in it is retried only the first time
    it is seen: by this runner, or by any runner sharing the file `options.retried_log`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.retried: set[str] = set()
        self.retried_log = Path(spec.options["retried_log"]) if "retried_log" in spec.options else None

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        if self.retried_log is not None and self.retried_log.exists():
            self.retried.update(self.retried_log.read_text().splitlines())
        for text in (x.text for x in batch):
            if "RETRY" in text and not ("ONCE" in text and text in self.retried):
                self.retried.add(text)
                if self.retried_log is not None:
                    with self.retried_log.open("a") as f:
                        f.write(f"{text}\n")
                delay = re.search(r"DELAY=([0-9.]+)", text)
                raise Retry(f"service busy for {text}", delay=float(delay.group(1)) if delay else None)
        return super().predict(batch)


class MiscountingRunner(BatchRecordingRunner):
    """Returns one output too few for a batch with "MISCOUNT" in a text."""

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        outputs = super().predict(batch)
        return outputs[:-1] if any("MISCOUNT" in x.text for x in batch) else outputs
