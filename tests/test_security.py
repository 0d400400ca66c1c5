"""Credentials stay out of logs and errors; TLS URLs are accepted as they are."""

from __future__ import annotations

import logging

import pytest

from db import make_engine, redact_url
from producer import Client
from producer.broker import Publisher
from producer.settings import ProducerSettings
from tests.conftest import Backend
from tests.faults.conftest import free_port

SECRET = "s3cr3t-pa55"


def test_database_urls_are_redacted() -> None:
    redacted = redact_url(f"postgresql://textq:{SECRET}@db.internal:5432/jobs?sslmode=require")
    assert SECRET not in redacted
    assert "db.internal:5432/jobs" in redacted


def test_broker_urls_are_redacted() -> None:
    publisher = Publisher(ProducerSettings(broker_url=f"rediss://:{SECRET}@cache.internal:6380/0?ssl_cert_reqs=required"))
    assert SECRET not in publisher.redacted_url()
    assert "cache.internal:6380" in publisher.redacted_url()


def test_tls_urls_are_accepted() -> None:
    engine = make_engine("postgresql://textq@127.0.0.1:5432/textq?sslmode=require")
    assert engine.url.query["sslmode"] == "require"
    assert engine.url.drivername == "postgresql+psycopg"
    client = Client(database_url="sqlite://", broker_url=f"rediss://:{SECRET}@127.0.0.1:6380/0?ssl_cert_reqs=required")
    assert client.publisher.app.conf.broker_url.startswith("rediss://")
    client.close()


def test_publish_failure_is_logged_without_the_password(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    dead_broker = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING), Client(database_url=backend.database_url, broker_url=dead_broker) as client:
        client.publisher.app.conf.broker_transport_options["max_retries"] = 0
        client.publisher.app.conf.broker_connection_max_retries = 0
        view = client.classify("kept in the ledger", model="echo")
    assert view.status == "queued"  # the row exists; the sweeper publishes it once Redis is back
    assert "the sweeper will re-publish" in caplog.text
    assert SECRET not in caplog.text
