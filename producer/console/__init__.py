"""The operator's console served by the gateway under /console (producer/console/routes.py)."""

from producer.console.routes import PREFIX, include_console

__all__ = ["PREFIX", "include_console"]
