"""The `textq` command line: run workers, submit and inspect jobs, migrate the database, demo."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from producer.batch_cli import batch
from producer.cli_client import cli_client
from producer.contract import JobView
from producer.errors import TextqError
from producer.registry import load_registry
from producer.retry_cli import retry
from producer.settings import producer_settings
from producer.webhook_cli import webhooks
from producer.worker_process import worker_command, worker_environment


def _print_view(view: JobView, as_json: bool) -> None:
    if as_json:
        click.echo(view.model_dump_json(indent=2))
        return
    click.echo(f"id:       {view.id}\nstatus:   {view.status}\nmodel:    {view.model} ({view.task})")
    if view.model_version:
        click.echo(f"version:  {view.model_version}")
    if view.output is not None:
        click.echo(f"output:   {json.dumps(view.output)}")
    if view.error_type:
        click.echo(f"error:    {view.error_type}: {view.error_message}")
    if view.finished_at:
        click.echo(
            f"took:     {(view.finished_at - view.created_at).total_seconds() * 1000:.0f} ms "
            f"(attempts: {view.attempts}, worker: {view.worker})"
        )


class _TextqGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TextqError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_TextqGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """textq: NLP models behind a queue.

    Settings come from TEXTQ_* environment variables: TEXTQ_BROKER_URL (Redis),
    TEXTQ_DATABASE_URL (SQLAlchemy URL; SQLite file by default), TEXTQ_MODELS_FILE (extra models).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--models", help="Comma-separated models to serve (default: all in the registry).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--check", is_flag=True,
    help="Do not start: exit 0 if the broker and database answer and a worker on this host answers a ping "
         "(health check); otherwise say which does not.",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(models: str | None, loglevel: str, check: bool, celery_args: tuple[str, ...]) -> None:
    """Start a worker that serves MODELS' queues (extra arguments go to `celery worker`).

    Models load once at start-up; one batcher thread per model runs them. Scale out by starting
    more workers, on this machine or others, against the same Redis and database.
    """
    if check:
        problem = _worker_problem()
        if problem is not None:
            raise click.ClickException(problem)
        click.echo("ok")
        return
    load_registry(producer_settings().models_file)  # a broken models file: one clear error, before the worker
    argv = worker_command(loglevel=loglevel, extra=celery_args)
    os.execve(argv[0], argv, worker_environment(os.environ, models=models.split(",") if models else None))


def _worker_problem(timeout: float = 2.0) -> str | None:
    """What keeps this host's worker from serving: the broker, the database, or no worker answering."""
    from db.engine import session_factory
    from db.settings import DatabaseSettings
    from producer.broker import Publisher
    from producer.health import broker_problem, database_problem

    # Not a Client: a health check is no producer, and must not record its limits for the workers.
    publisher = Publisher(producer_settings())
    try:
        if problem := broker_problem(publisher):
            return problem
        url = DatabaseSettings().database_url
        if problem := database_problem(session_factory(url), url):
            return problem
        host = socket.gethostname()
        replies = publisher.app.control.ping(timeout=timeout) or []
        if not any(name.endswith(f"@{host}") for reply in replies for name in reply):
            return f"no worker on this host ({host}) answered a ping within {timeout:g}s; the broker and database answer"
        return None
    finally:
        publisher.close()


@cli.command()
@click.argument("text", required=False)
@click.option("--model", help="Registry model name (default: sentiment, zero-shot with --labels, summarize).")
@click.option("--labels", help="Comma-separated candidate labels (zero-shot classification).")
@click.option("--summarize", "summarize", is_flag=True, help="Summarize instead of classify.")
@click.option("--max-sentences", type=int, default=3, show_default=True, help="Summary length.")
@click.option("--task", type=click.Choice(["classify", "summarize", "translate", "answer", "embed"]),
              help="The task (default: classify, or summarize with --summarize). answer: TEXT is the context.")
@click.option("--style", type=click.Choice(["extractive", "abstractive"]), help="Summary style (default: the model's).")
@click.option("--max-words", type=int, help="Abstractive summary length in words.")
@click.option("--target-language", help="translate: ISO 639-1 code or English name, e.g. fr or French.")
@click.option("--source-language", help="translate: the text's language (default: the model tells).")
@click.option("--question", help="answer: the question (TEXT is the context).")
@click.option("--max-new-tokens", type=int, help="translate/answer: most tokens to generate.")
@click.option("--truncate", is_flag=True, default=None, help="Cut a text longer than the model's window instead of chunking it.")
@click.option("--priority", type=int, default=5, show_default=True, help="0 runs first, 9 last.")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON lines, one request object per line (bulk submit).",
)
@click.option("--wait", "wait_s", type=float, help="Wait up to this many seconds for the result(s).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def submit(
    text: str | None,
    model: str | None,
    labels: str | None,
    summarize: bool,
    max_sentences: int,
    task: str | None,
    style: str | None,
    max_words: int | None,
    target_language: str | None,
    source_language: str | None,
    question: str | None,
    max_new_tokens: int | None,
    truncate: bool | None,
    priority: int,
    file: Path | None,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Submit TEXT (or every line of --file) and print the job id(s)."""
    requests = _json_lines(file) if file is not None else None  # a bad file fails before any connection
    client = cli_client()
    if requests is not None:
        step = client.settings.jobs_per_message * 8
        ids = []
        for start in tqdm(range(0, len(requests), step), desc="submitting", unit="chunk", disable=None):
            ids += [v.id for v in client.submit_many(requests[start : start + step])]
        if wait_s is not None:
            views = client.wait_many(ids, timeout=wait_s)
            for v in views:
                click.echo(v.model_dump_json() if as_json else f"{v.id} {v.status} {json.dumps(v.output)}")
        else:
            click.echo("\n".join(str(i) for i in ids))
        return
    if text is None:
        raise click.UsageError("give TEXT or --file")
    request: dict[str, Any] = {"text": text, "model": model, "priority": priority}
    task = task or ("summarize" if summarize else "classify")
    if task == "summarize":
        request.update(max_sentences=max_sentences, style=style, max_words=max_words)
    elif task == "classify":
        request.update(labels=labels.split(",") if labels else None)
    elif task == "translate":
        request.update(target_language=target_language, source_language=source_language, max_new_tokens=max_new_tokens)
    elif task == "answer":
        request.update(context=request.pop("text"), question=question, max_new_tokens=max_new_tokens)
    request.update(task=task, truncate=truncate)
    request = {k: v for k, v in request.items() if v is not None}
    view = client.submit(request)
    if wait_s is not None:
        view = client.wait(view.id, timeout=wait_s)
        _print_view(view, as_json)
    else:
        click.echo(view.model_dump_json() if as_json else str(view.id))


def _json_lines(path: Path) -> list[Any]:
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                requests.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path} line {number} is not valid JSON: {exc}") from None
    return requests


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def get(job_id: str, as_json: bool) -> None:
    """Show a job: status, output or error, timings."""
    _print_view(cli_client().get(job_id), as_json)


@cli.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def wait(job_id: str, timeout: float, as_json: bool) -> None:
    """Wait for a job to finish, then show it (exit 1 on timeout)."""
    _print_view(cli_client().wait(job_id, timeout=timeout), as_json)


@cli.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    click.echo(cli_client().cancel(job_id).status)


@cli.command()
def models() -> None:
    """List the models in the registry and their queues."""
    for spec in load_registry(producer_settings().models_file).specs():
        click.echo(f"{spec.name:<16} {spec.kind:<10} runner={spec.runner:<12} queue={spec.queue} source={spec.source}")
    from producer.finetune_cli import print_versions

    print_versions()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Queue depths, workers alive and job counts by status."""
    from dataclasses import asdict

    from pydantic_core import to_jsonable_python

    from producer.operations import cluster_status

    report = cluster_status(cli_client())
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=to_jsonable_python))
        return
    click.echo(f"{'queue':<24} waiting")
    for name, depth in report.queue_depths.items():
        click.echo(f"{'textq.' + name:<24} {depth}")
    click.echo(f"\nworkers alive: {len(report.workers)}")
    if report.workers:
        click.echo(f"{'worker':<28} {'host':<20} {'pid':>7}  {'models':<24} {'heartbeat':>10}  {'in hand':>7}  state")
    for w in report.workers:
        click.echo(f"{w.name:<28} {w.host:<20} {w.pid:>7}  {','.join(w.models):<24} "
                   f"{w.heartbeat_age_s:>8.1f}s ago {w.jobs_in_hand:>7}  {w.state}")
    click.echo(f"\n{'status':<24} jobs")
    for name, count in sorted(report.jobs_by_status.items()):
        click.echo(f"{name:<24} {count}")


@cli.group()
def jobs() -> None:
    """Job table maintenance."""


@jobs.command()
@click.option("--older-than", required=True, help="Age of finished jobs to delete, e.g. 7d, 12h, 30m.")
def purge(older_than: str) -> None:
    """Delete finished jobs (succeeded, failed, cancelled, expired) older than --older-than.

    Queued and running jobs are never deleted. Runs in batches of 10,000 rows.
    """
    from producer.operations import parse_age

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    click.echo(f"deleted {cli_client().purge_finished(age)} finished jobs older than {older_than}")


@cli.group()
def db() -> None:
    """Database commands."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Create or migrate the jobs table at TEXTQ_DATABASE_URL."""
    from db import redact_url
    from db import upgrade as run_upgrade
    from db.settings import DatabaseSettings

    url = DatabaseSettings().database_url
    run_upgrade(url, revision)
    click.echo(f"database at {redact_url(url)} is at {revision}")


def _require_api_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"{exc}: install the gateway with pip install 'textq[api]'") from None


def _serve_options(command: Any) -> Any:
    command = click.option("--port", type=int, default=8000, show_default=True,
                           help="Port of the console (0: any free port).")(command)
    return click.option("--host", default="127.0.0.1", show_default=True,
                        help="Interface of the console (0.0.0.0: all).")(command)


@cli.command()
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for results.")
@click.option("--keep", is_flag=True, help="After the results, keep everything running and serve the console "
                                           "until Ctrl-C or SIGTERM.")
@_serve_options
def demo(timeout: float, keep: bool, host: str, port: int) -> None:
    """Run everything on this machine: broker (embedded if none answers), database, a worker,
    sample sentiment, zero-shot and summarization jobs; print the results; stop it all (--keep:
    serve the console first, until Ctrl-C)."""
    from producer.demo import run_demo

    if keep:
        _require_api_extra()
    run_demo(timeout, keep=keep, host=host, port=port)


@cli.command()
@click.option("--models", help="Comma-separated models the worker serves (default: all in the registry).")
@_serve_options
def console(models: str | None, host: str, port: int) -> None:
    """Start a broker (embedded if none answers), the database, a worker and the gateway on this
    machine, and serve the operator's console until Ctrl-C or SIGTERM (then stop them all).

    With no TEXTQ_API_KEYS, a key made for this run is printed to log in with.
    """
    _require_api_extra()
    from producer.console.serve import serve_console
    from producer.local_stack import local_stack, stop_on_signals

    with stop_on_signals(), local_stack(models=models.split(",") if models else None) as client:
        serve_console(client, host=host, port=port)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--insecure-dev", is_flag=True, help="Serve without TEXTQ_API_KEYS (a laptop only, never a network).")
def api(host: str, port: int, insecure_dev: bool) -> None:
    """Serve the HTTP gateway (needs the `api` extra): /v1/jobs, /healthz, /readyz, docs at /docs."""
    _require_api_extra()
    import uvicorn

    from producer.gateway import GatewaySettings, create_app

    settings = GatewaySettings(insecure_dev=True) if insecure_dev else GatewaySettings()
    uvicorn.run(create_app(settings=settings), host=host, port=port)


cli.add_command(batch)
cli.add_command(webhooks)
from producer.finetune_cli import COMMANDS as _FINETUNE_COMMANDS  # noqa: E402  (finetune, deploy, delete-version, feedback)

for _command in _FINETUNE_COMMANDS:
    cli.add_command(_command)
cli.add_command(retry)


def main() -> None:
    cli()
