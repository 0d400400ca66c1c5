"""`textq retry`: put one failed job, or every failed job matching a filter, back to queued."""

from __future__ import annotations

import click

from db.models import utcnow
from producer.cli_client import cli_client
from producer.operations import parse_age


@click.command()
@click.argument("job_id", required=False)
@click.option("--status", default=None, help="Bulk: the status to retry (only 'failed').")
@click.option("--model", help="Bulk: only this model's jobs.")
@click.option("--error-type", help="Bulk: only jobs that failed with this error type.")
@click.option("--since", help="Bulk: only jobs that finished within this age, e.g. 1h, 30m, 7d.")
@click.option("--dry-run", is_flag=True, help="Bulk: only say how many jobs match.")
def retry(job_id: str | None, status: str | None, model: str | None, error_type: str | None,
          since: str | None, dry_run: bool) -> None:
    """Retry JOB_ID, or every failed job matching --status failed [--model M] [--since 1h].

    A retried job goes back to queued with its previous error kept, and runs with a fresh attempt budget.
    """
    bulk = status is not None or model is not None or error_type is not None or since is not None or dry_run
    if job_id is not None and bulk:
        raise click.UsageError("give JOB_ID or filters (--status, --model, --error-type, --since), not both")
    if job_id is not None:
        view = cli_client().retry(job_id)
        click.echo(f"{view.id} {view.status} (previous error: {view.previous_error})")
        return
    if status is None:
        raise click.UsageError("give JOB_ID, or --status failed with optional --model, --error-type, --since")
    try:
        finished_since = utcnow() - parse_age(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    count = cli_client().retry_matching(status=status, model=model, error_type=error_type, since=finished_since,
                                     dry_run=dry_run)
    click.echo(count.describe())


__all__ = ["retry"]
