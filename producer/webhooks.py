"""Webhooks: settings, the URL safety rules, and Standard Webhooks signing (https://www.standardwebhooks.com).

Every message carries `webhook-id` (the same on each retry: deduplicate by it), `webhook-timestamp`
(Unix seconds) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one per
valid secret separated by spaces, so that a receiver keeps verifying while a secret is rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producer.errors import InvalidJobError, TextqError

SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048


class WebhookUrlError(TextqError, ValueError):
    """A webhook URL breaks a safety rule (not https, or an address inside the network); named in the message."""


class WebhookSettings(BaseSettings):
    """`TEXTQ_WEBHOOK_*`: where webhooks may go, how they are signed, how long they are retried."""

    model_config = SettingsConfigDict(env_prefix="TEXTQ_WEBHOOK_", extra="ignore")

    # Hosts (names or addresses, optionally host:port) allowed although they are plain http or resolve
    # to a loopback, private or link-local address: a receiver inside the network, or a test's.
    allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Secrets that sign the messages to jobs' and batches' own webhook_url (registered endpoints have
    # their own): the first signs, all are sent while a new one is rolled out.
    secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    timeout_s: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(10, ge=1)
    # The wait after the first failure; each later wait is 4x longer, up to backoff_cap_s:
    # 5 s, 20 s, 80 s, 5 min, 21 min, 85 min, then 6 h: ten attempts over about a day.
    backoff_base_s: float = Field(5.0, gt=0)
    backoff_cap_s: float = Field(6 * 3600.0, gt=0)
    # Deliveries a sender claims per round, and how long it sleeps when none is due.
    claim_batch: int = Field(32, ge=1)
    poll_interval_s: float = Field(1.0, gt=0)

    @field_validator("allow_hosts", "secrets", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_form(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            secret_key(secret.get_secret_value())  # raises on a malformed secret, naming the rule
        return value

    def backoff_s(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones."""
        return float(min(self.backoff_base_s * 4 ** (attempts - 1), self.backoff_cap_s))


@lru_cache(maxsize=1)
def webhook_settings() -> WebhookSettings:
    """Settings read once per process, for entry points; library code takes them as arguments."""
    return WebhookSettings()


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key in a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r} followed by base64")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by base64; this one is not base64") from None


def signature_headers(message_id: str, timestamp: int, body: bytes, secrets_: list[str]) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with each of `secrets_`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signatures = [
        "v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode() for s in secrets_
    ]
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": " ".join(signatures)}


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether one of the message's signatures is `secret`'s (what a receiver does; see README)."""
    expected = signature_headers(headers["webhook-id"], int(headers["webhook-timestamp"]), body, [secret])
    given = headers["webhook-signature"].split()
    return any(hmac.compare_digest(expected["webhook-signature"], sig) for sig in given)


def check_url(url: str, allow_hosts: list[str]) -> list[str]:
    """The addresses `url` may be sent to, or WebhookUrlError naming the broken rule: https only,
    no credentials, and no loopback, private, link-local or otherwise internal address, unless
    its host is in `allow_hosts` (TEXTQ_WEBHOOK_ALLOW_HOSTS). Resolves the host name."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlError(f"webhook_url is longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookUrlError(f"webhook_url {url!r} has an invalid port") from None
    if not host or parts.scheme not in ("https", "http"):
        raise WebhookUrlError(f"webhook_url must be an absolute https:// URL, not {url!r}")
    if parts.username or parts.password:
        raise WebhookUrlError("webhook_url must not carry credentials (user:password@); the signature authenticates")
    allowed = host in allow_hosts or f"{host}:{port}" in allow_hosts
    if parts.scheme != "https" and not allowed:
        raise WebhookUrlError(f"webhook_url must use https://, not {parts.scheme}:// "
                              "(or name the host in TEXTQ_WEBHOOK_ALLOW_HOSTS)")
    try:
        addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except OSError as exc:
        raise WebhookUrlError(f"webhook_url host {host!r} does not resolve ({exc.strerror or exc})") from None
    internal = [a for a in addresses if _internal(a)]
    if internal and not allowed:
        raise WebhookUrlError(f"webhook_url host {host!r} resolves to {internal[0]}, an address inside the network "
                              "(loopback, private or link-local); name it in TEXTQ_WEBHOOK_ALLOW_HOSTS to allow it")
    return addresses


def check_webhook_url(url: str, settings: WebhookSettings | None = None) -> None:
    """A job's or batch's own webhook_url at submit: InvalidJobError naming `webhook_url` and the rule."""
    settings = settings or webhook_settings()
    try:
        if not settings.secrets:
            raise WebhookUrlError("webhook_url needs a signing secret: set TEXTQ_WEBHOOK_SECRETS=whsec_... "
                                  "(textq webhooks new-secret prints one)")
        check_url(url, settings.allow_hosts)
    except WebhookUrlError as exc:
        raise InvalidJobError.single("webhook_url", str(exc).removeprefix("webhook_url ")) from None


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


__all__ = [
    "SECRET_PREFIX",
    "WebhookSettings",
    "WebhookUrlError",
    "check_url",
    "check_webhook_url",
    "new_secret",
    "secret_key",
    "signature_headers",
    "verify",
    "webhook_settings",
]
