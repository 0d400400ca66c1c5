"""Sample a running worker with py-spy (every thread, GIL holders or not) and summarise where its
CPU time goes: by thread, by leaf function (self time), and by function on the stack (total)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")
_DIGITS = re.compile(r"[-_]?\d+")
# Totals are listed for textq's own code: library time shows up as self time of its leaves.
OWN_CODE = ("worker/", "producer/", "db/", "bench/")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profile:
    """`with Profile(pid, out):` records raw collapsed stacks into `out` while the block runs."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        self.args = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
                     "--nonblocking", "-o", str(out)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profile:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match['func']} ({file})"


def summarize(raw: Path, top: int = 12) -> str:
    """Plain-text summary of a py-spy raw file: shares of all samples."""
    threads: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        count = int(match["count"])
        frames = match["stack"].split(";")
        thread = frames.pop(0).split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
        threads[_DIGITS.sub("", thread) or thread] += count
        calls = [_short(f) for f in frames] or ["(no python frame)"]
        leaves[calls[-1]] += count
        for call in {c for c in calls if c.endswith(".py)") and c.rsplit("(", 1)[-1].startswith(OWN_CODE)}:
            totals[call] += count
    samples = sum(threads.values()) or 1

    def block(title: str, counter: Counter[str]) -> list[str]:
        return [title] + [f"  {100 * n / samples:5.1f}%  {name}" for name, n in counter.most_common(top)]

    return "\n".join([
        f"{samples} samples (active threads only) from {raw.name}",
        *block("by thread:", threads),
        *block("self (leaf function):", leaves),
        *block("total (textq function on the stack):", totals),
    ])
