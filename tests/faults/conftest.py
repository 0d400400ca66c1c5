"""Fault-test fixtures: services of the test's own (so they can be flushed, killed and restarted
without touching anything else on the machine) and a report of what happened to every job."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import MODELS_FILE
from tests.services import create_postgres_database, drop_postgres_database, service_missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server process on a free port, with no persistence (like the default)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server binary", FileNotFoundError("redis-server"))
        self.binary = str(binary)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, down_for: float = 1.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class PostgresServer:
    """A private PostgreSQL cluster (initdb as the postgres user), so it can be restarted freely."""

    def __init__(self) -> None:
        bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
        if bindir is None or os.geteuid() != 0:
            service_missing("a PostgreSQL installation and root (to run initdb as postgres)", FileNotFoundError("initdb"))
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="textq-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres(["initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"])

    def _as_postgres(self, args: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bindir / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._as_postgres(
            [
                "pg_ctl",
                "-D",
                str(self.dir / "data"),
                "-w",
                "-l",
                str(self.dir / "log"),
                "-o",
                f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ]
        )

    def stop(self) -> None:
        self._as_postgres(["pg_ctl", "-D", str(self.dir / "data"), "-w", "-m", "fast", "stop"])

    def restart(self, down_for: float = 2.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


FAULT_ENV = {
    "TEXTQ_MODELS_FILE": str(MODELS_FILE),
    "TEXTQ_REPUBLISH_AFTER_S": "2",
    "TEXTQ_SWEEP_INTERVAL_S": "0.5",
    "TEXTQ_LEASE_S": "3",
    "TEXTQ_WORKER_MODELS": "echo,slow,poison",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture()
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def postgres_db() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, migrated."""
    from db import upgrade

    url, name = create_postgres_database()
    upgrade(url)
    yield url
    from db.engine import shared_engine

    shared_engine.cache_clear()
    drop_postgres_database(name)
