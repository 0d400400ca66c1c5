"""The Client every `textq` command acts through, and the `--tenant` option that scopes it.

A command runs against the database directly (it holds its credentials), so without `--tenant` it
sees every tenant's jobs, files and batches and creates as `default`, as `Client()` does. With
`--tenant NAME` it acts as an API key of NAME does over HTTP: it creates as NAME and sees only
NAME's (another tenant's batch is "not found", as an unknown id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import click

from producer.tenants import check_tenant

if TYPE_CHECKING:
    from producer.client import Client

F = TypeVar("F", bound=Callable[..., object])


def cli_client(tenant: str | None = None) -> Client:
    """A Client from the TEXTQ_* environment, as `tenant` when one is given."""
    # Imported here: `textq --help` and `textq worker` start without the Client's imports.
    from producer.client import Client

    return Client(tenant=tenant)


def _valid_tenant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_tenant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def tenant_option(command: F) -> F:
    """`--tenant NAME` on a command: pass it to `cli_client`."""
    return click.option(
        "--tenant", metavar="NAME", callback=_valid_tenant,
        help="Act as this tenant, as its API key does over HTTP: create as NAME, see only NAME's "
             "(default: create as 'default', see every tenant's).",
    )(command)


__all__ = ["cli_client", "tenant_option"]
