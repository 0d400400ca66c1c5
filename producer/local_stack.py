"""textq on one machine, for `textq demo` and `textq console`: a broker (embedded when none answers),
the database (migrated), one worker as a child process, and a Client on them; all stopped in reverse
order on exit, including on Ctrl-C or SIGTERM, so that no child process outlives the command."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from types import FrameType

import click

from db import redact_url, upgrade
from db.settings import DatabaseSettings
from producer.client import Client
from producer.embedded_redis import reachable_broker
from producer.settings import ProducerSettings
from producer.worker_process import WorkerProcess

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopping(BaseException):
    """A stop signal arrived: raised in the main thread so that every `with` block unwinds. A
    BaseException, so that `except Exception` on the way does not swallow it."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Stopping` for the block, and end the block quietly when one came.

    Without this a SIGTERM kills the process at once and leaves the worker and the embedded broker
    running. Further signals are ignored while the stack stops: a second Ctrl-C in a terminal still
    reaches the worker itself (the whole foreground process group gets it) and cuts its drain short.
    """

    def raise_stopping(signum: int, _frame: FrameType | None) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopping(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_stopping) for sig in STOP_SIGNALS}
    try:
        yield
    except Stopping as stop:
        click.echo(f"{stop}: stopped the gateway, the worker and the broker")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def local_stack(*, models: Sequence[str] | None = None) -> Iterator[Client]:
    """A Client on the broker at TEXTQ_BROKER_URL (an embedded one if it does not answer) and the
    database at TEXTQ_DATABASE_URL migrated to head, with a worker serving `models` (default: all), ready."""
    database_url = DatabaseSettings().database_url
    with reachable_broker(ProducerSettings().broker_url) as (broker_url, embedded):
        click.echo(f"broker:   {'embedded valkey at ' if embedded else ''}{broker_url}")
        click.echo(f"database: {redact_url(database_url)}")
        upgrade(database_url)
        env = {"TEXTQ_BROKER_URL": broker_url, "TEXTQ_DATABASE_URL": database_url}
        os.environ.update(env)
        click.echo(f"starting a worker for {', '.join(models) if models else 'every model'} (loads them once)...")
        worker = WorkerProcess(env=env, models=list(models) if models else None)
        try:  # not `with`: a signal during start() must still stop the child that start() made
            worker.start(timeout=600)  # a first run converts the GGUF models: minutes
            with Client(database_url=database_url, broker_url=broker_url) as client:
                yield client
        finally:
            worker.stop()


__all__ = ["Stopping", "local_stack", "stop_on_signals"]
