"""The services one benchmark run owns: a fresh database, a Redis database, a models file, and the
`TEXTQ_*` environment that points the worker and the producer at them. Torn down at the end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from tests.services import claim_redis_db

REDIS_URL = os.environ.get("TEXTQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_ADMIN_URL = os.environ.get("TEXTQ_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# Queue and database overhead alone: answers at once, batches as large as the null target needs.
NULL_SPEC = {"name": "null", "kind": "classify", "runner": "null", "max_batch_size": 256}


@dataclass
class BenchEnvironment:
    database: str  # "postgresql" | "sqlite"
    database_url: str = ""
    broker_url: str = ""
    # Extra settings (e.g. TEXTQ_TORCH_THREADS) for the workers and this process.
    overrides: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="textq-bench-")))
    _pg_name: str | None = None

    @property
    def models_file(self) -> Path:
        return self.root / "models.json"

    @property
    def env(self) -> dict[str, str]:
        """What a worker (and this process's Client) needs, as tests/conftest.py `Backend.env`."""
        return {
            "TEXTQ_DATABASE_URL": self.database_url,
            "TEXTQ_BROKER_URL": self.broker_url,
            "TEXTQ_MODELS_FILE": str(self.models_file),
            "TOKENIZERS_PARALLELISM": "false",
            **self.overrides,
        }

    def __enter__(self) -> BenchEnvironment:
        self.models_file.write_text(json.dumps([NULL_SPEC]))
        self.broker_url = f"{REDIS_URL}/{claim_redis_db()}"
        self.flush_broker()
        if self.database == "sqlite":
            self.database_url = f"sqlite:///{self.root / 'jobs.db'}"
        else:
            self._pg_name = f"textq_bench_{uuid.uuid4().hex[:12]}"
            admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self._pg_name}"'))
            admin.dispose()
            self.database_url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{self._pg_name}"
        from db import upgrade

        upgrade(self.database_url)
        # Before any textq import caches settings or the registry in this process.
        os.environ.update(self.env)
        return self

    def flush_broker(self) -> None:
        client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2)
        client.flushdb()
        client.close()

    def __exit__(self, *exc: object) -> None:
        from db.engine import shared_engine

        shared_engine.cache_clear()
        if self._pg_name is not None:
            admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)'))
            admin.dispose()
        if self.broker_url:
            self.flush_broker()
        shutil.rmtree(self.root, ignore_errors=True)
