"""The gateway serving the console on this machine for `textq demo --keep` and `textq console`: it
prints the console's URL and how to log in once it listens, and serves until a stop signal."""

from __future__ import annotations

import secrets
import socket

import click
import uvicorn
from pydantic import SecretStr

from producer.client import Client
from producer.console.routes import PREFIX
from producer.gateway import GatewaySettings, create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
URL_LINE = "console:  "


def local_settings() -> tuple[GatewaySettings, str]:
    """The gateway's settings from TEXTQ_API_*, and how to log in; with no key configured, a key
    made for this run only (the console is never served without a key unless asked to)."""
    settings = GatewaySettings()
    if settings.keys or settings.keys_file:
        return settings, "log in with one of your TEXTQ_API_KEYS"
    if settings.insecure_dev:
        return settings, "log in with any key (TEXTQ_API_INSECURE_DEV: no keys)"
    key = "local-" + secrets.token_urlsafe(18)
    return settings.model_copy(update={"keys": [SecretStr(key)]}), f"log in with the API key {key} (made for this run)"


class _AnnouncingServer(uvicorn.Server):
    """Says where the console is once the socket listens (port 0: the port the system chose)."""

    def __init__(self, config: uvicorn.Config, login_hint: str) -> None:
        super().__init__(config)
        self.login_hint = login_hint

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"{URL_LINE}http://{shown}:{port}{PREFIX}/\n          {self.login_hint}; Ctrl-C stops everything")


def serve_console(client: Client, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the gateway (API and console) over `client` until SIGINT or SIGTERM.

    uvicorn handles the signal itself, then raises it again with the handlers it found installed:
    the caller's (producer.local_stack.stop_on_signals) then stops the rest of the stack.
    """
    settings, login_hint = local_settings()
    app = create_app(client, settings)
    # Access logs off: the overview's live refresh would print a line every few seconds.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    _AnnouncingServer(config, login_hint).run()


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "URL_LINE", "local_settings", "serve_console"]
