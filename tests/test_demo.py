"""`textq demo --keep` (what `make demo DEMO_ARGS=--keep` runs) and `textq console`, as real processes
on the embedded-Redis path (no broker answers at the URL): they print the console's URL and a key,
serve the console, and on SIGINT or SIGTERM stop everything they started."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from tests.conftest import MODELS_FILE
from tests.faults.conftest import free_port

URL_LINE = re.compile(r"^console:  (http://\S+/console/)$")
KEY_LINE = re.compile(r"log in with the API key (\S+) ")


class Textq:
    """`textq ARGS` as a child process whose output is read line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "from producer.cli import main; main()", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern.pattern} in {timeout:g}s:\n" + "\n".join(self.output)) from None
            if line is None:
                raise AssertionError(f"exited with {self.proc.wait()} before {pattern.pattern}:\n" + "\n".join(self.output))
            self.output.append(line)
            if match := pattern.search(line):
                return match

    def stop(self, sig: signal.Signals, timeout: float = 120) -> int:
        """Send `sig` to this process alone (not its group: it must stop its children itself)."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TEXTQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
           "TEXTQ_DATABASE_URL": f"sqlite:///{tmp_path / 'local.db'}", "PYTHONUNBUFFERED": "1", **extra}
    for name in ("TEXTQ_API_KEYS", "TEXTQ_API_KEYS_FILE", "TEXTQ_API_INSECURE_DEV"):
        env.pop(name, None)
    return env


def _serves_the_console(textq: Textq) -> None:
    """The URL line, then the login page, a login with the printed key, and the overview with the worker."""
    url = textq.wait_for(URL_LINE, timeout=600)[1]
    key = textq.wait_for(KEY_LINE, timeout=10)[1]
    login = requests.get(f"{url}login", timeout=30)
    assert login.status_code == 200 and 'name="api_key"' in login.text
    with requests.Session() as browser:
        assert browser.post(f"{url}login", data={"api_key": "wrong"}, timeout=30).status_code == 401
        overview = browser.post(f"{url}login", data={"api_key": key}, timeout=30)
        assert overview.status_code == 200 and overview.url == url, overview.text
        assert "no worker has reported" not in overview.text and key not in overview.text


def _stops_everything(textq: Textq, sig: signal.Signals) -> None:
    children = psutil.Process(textq.proc.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "valkey" in names and "celery" in names, names  # the embedded broker and the worker
    assert textq.stop(sig) == 0, "\n".join(textq.output)
    _, alive = psutil.wait_procs(children, timeout=5)
    assert alive == [], alive
    textq.wait_for(re.compile(rf"^{sig.name}: stopped the gateway, the worker and the broker$"), timeout=5)


def test_demo_keep_prints_results_serves_the_console_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    env.pop("TEXTQ_MODELS_FILE", None)  # the default models, as `make demo` runs them
    demo = Textq("demo", "--keep", "--port", "0", env=env)
    try:
        demo.wait_for(re.compile("embedded valkey"), timeout=60)
        demo.wait_for(re.compile(r"^model +\| status"), timeout=600)
        _serves_the_console(demo)
        table = "\n".join(demo.output)
        assert table.count("succeeded") == 6
        for expected in ("positive", "negative", "sports", "business", "The city council met"):
            assert expected in table
        abstractive = next(line for line in demo.output if line.startswith("abstractive"))
        assert abstractive.split("|")[-1].strip(), "an abstractive summary"
        # Only the models the samples use: not the translate/answer LLM.
        assert "starting a worker for abstractive, sentiment, summarize, zero-shot " in table
        _stops_everything(demo, signal.SIGINT)
    finally:
        demo.proc.kill()


def test_textq_console_serves_the_console_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    env = _environment(tmp_path, TEXTQ_MODELS_FILE=str(MODELS_FILE))
    console = Textq("console", "--models", "echo", "--port", "0", env=env)
    try:
        _serves_the_console(console)
        _stops_everything(console, signal.SIGTERM)
    finally:
        console.proc.kill()
