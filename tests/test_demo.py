"""`textq demo` (what `make demo` runs) on the embedded-Redis path: no broker answers at the URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.faults.conftest import free_port


def _processes_started_by_demo(database_url: str) -> list[str]:
    """Processes that inherited the demo's environment: its worker and embedded broker, if alive."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.environ().get("TEXTQ_DATABASE_URL") == database_url:
                found.append(" ".join(proc.info["cmdline"] or []))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_demo_with_embedded_broker_prints_results_and_leaves_nothing_running(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'demo.db'}"
    env = {**os.environ, "TEXTQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "TEXTQ_DATABASE_URL": database_url}
    env.pop("TEXTQ_MODELS_FILE", None)
    result = subprocess.run(
        [sys.executable, "-c", "from producer.cli import main; main()", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "embedded valkey" in result.stdout
    table = result.stdout.split("model ", 1)[1]
    assert table.count("succeeded") == 5
    for expected in ("positive", "negative", "sports", "business", "The city council met"):
        assert expected in table
    assert _processes_started_by_demo(database_url) == []
