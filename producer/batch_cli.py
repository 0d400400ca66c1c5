"""`textq batch ...`: submit a JSONL file as a batch, follow it, read its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

from db.models import BatchStatus
from producer.batches import BatchView
from producer.cli_client import cli_client, tenant_option

if TYPE_CHECKING:
    from producer.client import Client


def _print_batch(view: BatchView, as_json: bool) -> None:
    if as_json:
        click.echo(view.model_dump_json(indent=2))
        return
    counts = view.request_counts
    click.echo(f"id:       {view.id}\nstatus:   {view.status.value}\n"
               f"requests: {counts.total} total, {counts.completed} completed, {counts.failed} failed")
    for name, file_id in (("output", view.output_file_id), ("errors", view.error_file_id)):
        if file_id:
            click.echo(f"{name + ':':<9} {file_id}")
    for error in (view.errors or {}).get("data", [])[:20]:
        click.echo(f"  {error['message']}")


@click.group()
def batch() -> None:
    """Batches: a JSONL file of job requests in, output and error files out (the OpenAI Batch API's shape).

    Each line: {"custom_id": "...", "method": "POST", "url": "/v1/jobs", "body": {a job request}}.
    With --tenant NAME a command acts as NAME's API key does over HTTP; without, it sees every tenant's.
    """


@batch.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--window", default="24h", show_default=True, help="Completion window (e.g. 30m, 24h, 7d): jobs left then expire.")
@click.option("--priority", type=click.IntRange(0, 9), help="0 runs first, 9 last (default TEXTQ_BATCH_DEFAULT_PRIORITY: 8).")
@click.option("--skip-invalid-lines", is_flag=True, help="Run the valid lines; bad ones go to the error file.")
@click.option("--wait", "wait", is_flag=True, help="Follow the batch with a progress bar until it ends.")
@click.option("--timeout", type=float, default=24 * 3600.0, show_default=True, help="Seconds --wait waits at most.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@tenant_option
def submit(file: Path, window: str, priority: int | None, skip_invalid_lines: bool, wait: bool, timeout: float,
           as_json: bool, tenant: str | None) -> None:
    """Upload FILE, validate every line and enqueue the batch (a file with bad lines is refused whole)."""
    client = cli_client(tenant)
    view = client.submit_batch(file, completion_window=window, priority=priority, skip_invalid_lines=skip_invalid_lines)
    if view.status == BatchStatus.FAILED:
        _print_batch(view, as_json)
        raise click.ClickException(f"batch {view.id} refused: {len(view.errors.get('data', [])) if view.errors else 0} "
                                   "or more invalid lines (nothing was enqueued; or use --skip-invalid-lines)")
    if wait:
        view = _follow(client, view, timeout)
    _print_batch(view, as_json)


def _follow(client: Client, view: BatchView, timeout: float) -> BatchView:
    with tqdm(total=view.request_counts.total, desc=view.id, unit="job", disable=None, file=sys.stderr) as bar:

        def progress(current: BatchView) -> None:
            counts = current.request_counts
            bar.total = counts.total
            bar.update(counts.completed + counts.failed - bar.n)
            bar.set_postfix(status=current.status.value, completed=counts.completed, failed=counts.failed)

        return client.batches.wait(view.id, timeout=timeout, on_progress=progress)


@batch.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@tenant_option
def get(batch_id: str, as_json: bool, tenant: str | None) -> None:
    """Show a batch: status, counts, file ids, errors."""
    _print_batch(cli_client(tenant).batches.get(batch_id), as_json)


@batch.command(name="list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", help="Show batches older than this batch id (the last one shown).")
@tenant_option
def list_command(limit: int, after: str | None, tenant: str | None) -> None:
    """Batches, newest first."""
    page = cli_client(tenant).batches.list_batches(limit=limit, after=after)
    for view in page.data:
        counts = view.request_counts
        click.echo(f"{view.id}  {view.status.value:<11} {counts.completed + counts.failed}/{counts.total} "
                   f"(failed {counts.failed})")
    if page.has_more:
        click.echo(f"more: --after {page.last_id}")


@batch.command()
@click.argument("batch_id")
@tenant_option
def cancel(batch_id: str, tenant: str | None) -> None:
    """Cancel a batch's unfinished jobs (it ends cancelled, with the results it has)."""
    click.echo(cli_client(tenant).batches.cancel(batch_id).status.value)


@batch.command()
@click.argument("batch_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write here instead of standard output.")
@tenant_option
def results(batch_id: str, output: Path | None, tenant: str | None) -> None:
    """Print an ended batch's result lines (output file, then error file) as JSON lines."""
    lines = cli_client(tenant).batches.results(batch_id)
    with click.open_file(str(output) if output else "-", "w") as sink:
        for line in lines:
            sink.write(json.dumps(line) + "\n")


__all__ = ["batch"]
