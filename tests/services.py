"""Real services for tests: Redis and PostgreSQL on this machine, tiny Hugging Face models.

A missing service skips the tests that need it on a laptop and fails them under CI=true.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import pytest
import redis
from sqlalchemy import create_engine, text

REDIS_URL = os.environ.get("TEXTQ_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_ADMIN_URL = os.environ.get("TEXTQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def service_missing(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it (see .ci/run)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


_held_locks: dict[int, IO[str]] = {}
REDIS_DB_WAIT_S = 120.0


def claim_redis_db() -> int:
    """A Redis database number (2-15) no other test run on this machine is using right now; waits
    for one to be released when all are taken (other runs on the machine hold them)."""
    deadline = time.monotonic() + REDIS_DB_WAIT_S
    while True:
        for db in range(2, 16):
            if db in _held_locks:
                continue
            handle = open(f"{tempfile.gettempdir()}/textq-test-redis-db-{db}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _held_locks[db] = handle  # until release_redis_db, or until this process exits
            return db
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free Redis database 2-15 for tests after {REDIS_DB_WAIT_S:g}s")
        time.sleep(0.5)


def release_redis_db(url: str) -> None:
    """Give back the database of a `fresh_redis_db` URL to other tests and test runs."""
    handle = _held_locks.pop(int(url.rsplit("/", 1)[1]), None)
    if handle is not None:
        handle.close()


def fresh_redis_db() -> str:
    """URL of a Redis database of this test run's own, emptied first."""
    url = f"{REDIS_URL}/{claim_redis_db()}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
        client.close()
    except (redis.RedisError, OSError) as exc:
        release_redis_db(url)
        service_missing("Redis", exc)
    return url


def create_postgres_database() -> tuple[str, str]:
    """(URL, name) of a new, empty PostgreSQL database for this test session."""
    name = f"textq_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", name


def drop_postgres_database(name: str) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def build_tiny_models(root: Path) -> None:
    """Random-weight BERT classifier and T5 summarizer, small enough to build in a second."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    vocab = root / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?"]
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))

    cls_dir = root / "tiny-classifier"
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label={0: "alpha", 1: "beta", 2: "gamma"},
        label2id={"alpha": 0, "beta": 1, "gamma": 2},
    )
    BertForSequenceClassification(config).save_pretrained(cls_dir)
    tokenizer.save_pretrained(cls_dir)

    s2s_dir = root / "tiny-seq2seq"
    t5 = T5Config(
        vocab_size=len(words),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=3,
    )
    T5ForConditionalGeneration(t5).save_pretrained(s2s_dir)
    tokenizer.save_pretrained(s2s_dir)
