"""A live gateway for real HTTP clients (openai, httpx): served by uvicorn in a thread of the test, or
`textq api` in a process of its own (which a test can kill -9 and start again)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil
import uvicorn
from fastapi import FastAPI

from tests.helpers import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-gateway", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="the gateway to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def gateway_process(env: Mapping[str, str], log_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """`textq api` in a child process on a free port, with `env` over this process's environment and
    its output in `log_path`: (base URL, its process) until the block ends, then it is stopped."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from producer.cli import main; main()", "api", "--port", "0"],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        found: list[str] = []

        def listening() -> bool:
            assert proc.poll() is None, log_path.read_text()
            found[:] = re.findall(r"Uvicorn running on (http://\S+)", log_path.read_text())
            return bool(found)

        wait_until(listening, timeout=60, what="the gateway to listen")
        yield found[0], psutil.Process(proc.pid)
    finally:
        proc.terminate()  # nothing if it was killed already
        proc.wait(30)


__all__ = ["free_port", "gateway_process", "serve"]
