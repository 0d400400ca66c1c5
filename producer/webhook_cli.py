"""`textq webhooks ...`: the webhook sender, signing secrets, the delivery log."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from producer.webhooks import WebhookSettings, new_secret


@click.group()
def webhooks() -> None:
    """Signed webhooks (Standard Webhooks): the sender that delivers them, secrets, the delivery log."""


@webhooks.command()
@click.option("--once", is_flag=True, help="Send what is due now, print how many, and exit.")
def send(once: bool) -> None:
    """Deliver due webhooks until SIGTERM (run beside the workers; any number of senders share the work).

    It also moves unfinished batches on (finalizes them), so that batch events fire without a gateway.
    """
    from db.engine import session_factory
    from db.settings import DatabaseSettings
    from producer.batch_driver import BatchDriver
    from producer.client import Client
    from producer.webhook_sender import WebhookSender

    settings = WebhookSettings()
    sender = WebhookSender(session_factory(DatabaseSettings().database_url), settings)
    if once:
        click.echo(sender.send_due())
        return
    stop = threading.Event()

    def stop_on(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stop_on)
    signal.signal(signal.SIGINT, stop_on)
    client = Client()
    driver = BatchDriver(client.batches, interval_s=client.batches.settings.drive_interval_s)
    driver.start()
    click.echo(f"textq webhook sender {sender.name} running", err=True)
    try:
        sender.run_forever(stop)
    finally:
        driver.stop()
        client.close()


@webhooks.command(name="new-secret")
def new_secret_command() -> None:
    """Print a new signing secret (whsec_...) for TEXTQ_WEBHOOK_SECRETS."""
    click.echo(new_secret())


@webhooks.command()
@click.option("--subject", help="Only the deliveries of this job or batch id.")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
def deliveries(subject: str | None, limit: int) -> None:
    """The latest deliveries and their attempts."""
    from db.engine import session_factory
    from db.settings import DatabaseSettings
    from producer.webhook_endpoints import deliveries as latest

    for d in latest(session_factory(DatabaseSettings().database_url), subject_id=subject, limit=limit):
        click.echo(f"{d.webhook_id}  {d.status:<9} {d.event_type} {d.subject_id} -> {d.url}")
        for a in d.attempts:
            click.echo(f"    #{a.attempt} {a.started_at:%Y-%m-%d %H:%M:%S} {a.status_code or '-'} "
                       f"{a.latency_ms} ms {a.error or ''}")


__all__ = ["webhooks"]
