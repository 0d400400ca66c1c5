"""The request limits that producers and workers must agree on, and where a producer records its
own on the broker so that a worker can compare them with its own at start.

Validators receive a `Limits` explicitly (producer.contract); nothing here reads the environment.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

import redis

log = logging.getLogger(__name__)

# One key for every producer on the broker: the last Client to start wins.
LIMITS_KEY = "textq.limits"


class Limits(NamedTuple):
    """Input limits checked at submit (producer) and again at claim (worker). Each field is set by
    the environment variable TEXTQ_<FIELD NAME> (producer.settings). A tuple: built per request,
    it costs a fraction of a frozen dataclass."""

    max_text_chars: int = 20_000
    max_labels: int = 32
    max_label_chars: int = 100
    max_summary_sentences: int = 20

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Limits:
        data: dict[str, Any] = json.loads(raw)
        return cls(**{name: int(data[name]) for name in cls._fields if name in data})

    def differences(self, other: Limits) -> list[str]:
        """'name: self vs other' for each limit that differs."""
        return [f"{name}: {mine} vs {theirs}" for name, mine, theirs in zip(self._fields, self, other, strict=True)
                if mine != theirs]


DEFAULT_LIMITS = Limits()


def record_limits(client: redis.Redis | None, limits: Limits) -> None:
    """Publish a producer's limits on the broker (best effort: a broker that is down now must not
    stop a Client from starting; its jobs are published later by the sweeper anyway)."""
    if client is None:
        return
    try:
        client.set(LIMITS_KEY, limits.to_json())
    except (redis.RedisError, OSError) as exc:
        log.warning("could not record this producer's limits on the broker: %s", exc)


def recorded_limits(client: redis.Redis | None) -> Limits | None:
    """The limits the last producer recorded, or None (none recorded, not Redis, or unreadable)."""
    if client is None:
        return None
    try:
        raw = client.get(LIMITS_KEY)
    except (redis.RedisError, OSError) as exc:
        log.warning("could not read the producers' limits from the broker: %s", exc)
        return None
    if raw is None:
        return None
    try:
        return Limits.from_json(raw)
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable producer limits under %s: %s", LIMITS_KEY, exc)
        return None


__all__ = ["DEFAULT_LIMITS", "LIMITS_KEY", "Limits", "record_limits", "recorded_limits"]
