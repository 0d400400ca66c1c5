"""The console's session: a signed cookie naming the API key by a fingerprint (never the key), with
an expiry, and the CSRF token every form posts back. HMAC-SHA256 under a per-process secret unless
TEXTQ_CONSOLE_SECRET is set (then sessions survive restarts and work across gateway replicas)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from producer.tenants import ApiKey

COOKIE = "textq_console"
SESSION_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    fingerprint: str
    expires: int
    csrf: str


class Signer:
    def __init__(self, secret: bytes | None = None, lifetime_s: int = SESSION_S) -> None:
        configured = os.environ.get("TEXTQ_CONSOLE_SECRET")
        self._secret = secret or (configured.encode() if configured else secrets.token_bytes(32))
        self.lifetime_s = lifetime_s

    def fingerprint(self, key: ApiKey) -> str:
        return hmac.new(self._secret, b"key:" + key.key.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, key: ApiKey) -> tuple[str, Session]:
        """A cookie value for `key`, and the session it carries."""
        fingerprint, expires = self.fingerprint(key), int(time.time()) + self.lifetime_s
        session = Session(fingerprint, expires, self._csrf(fingerprint, expires))
        payload = base64.urlsafe_b64encode(json.dumps({"f": fingerprint, "e": expires}).encode()).decode()
        return f"{payload}.{self._sign(payload)}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries; None if it is missing, forged, malformed or expired."""
        if not cookie or len(cookie) > 512 or "." not in cookie:
            return None
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload))
            fingerprint, expires = str(data["f"]), int(data["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        return Session(fingerprint, expires, self._csrf(fingerprint, expires))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, session.csrf)

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, b"cookie:" + payload.encode(), hashlib.sha256).hexdigest()

    def _csrf(self, fingerprint: str, expires: int) -> str:
        return hmac.new(self._secret, f"csrf:{fingerprint}:{expires}".encode(), hashlib.sha256).hexdigest()


__all__ = ["COOKIE", "SESSION_S", "Session", "Signer"]
