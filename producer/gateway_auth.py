"""Who calls the gateway: its API keys (each with a tenant and scopes) as FastAPI dependencies that
hand each route the Client scoped to what the caller's key may see."""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from producer.client import Client
from producer.tenants import DEFAULT_TENANT, ApiKey, Scope

# Who may read /docs and /metrics: anyone, an admin key only, or nobody (not served).
Access = Literal["open", "admin", "off"]


class KeyRing:
    """The API keys, each with its tenant and scopes, and the Client scoped to what each key may see."""

    def __init__(self, keys: list[ApiKey], client: Client) -> None:
        self._keys = [(k.key.encode(), k) for k in keys]
        # insecure_dev without keys: every caller is an admin of the default tenant.
        self._anonymous = None if keys else ApiKey("", DEFAULT_TENANT, frozenset({Scope.ADMIN}))
        everyone = [*keys, *([self._anonymous] if self._anonymous else [])]
        self._clients = {(k.tenant, k.sees_all): client.for_tenant(k.tenant, see_all=k.sees_all) for k in everyone}

    def key_of(self, given: str) -> ApiKey | None:
        if self._anonymous is not None:
            return self._anonymous
        # compare_digest against every key: the time taken says nothing about which key is close.
        matches = [k for secret, k in self._keys if hmac.compare_digest(given.encode(), secret)]
        return matches[0] if matches else None

    def known_keys(self) -> list[ApiKey]:
        """Every configured key (the anonymous one under insecure_dev): the console's session names one."""
        return [k for _, k in self._keys] or ([self._anonymous] if self._anonymous else [])

    def client_of(self, key: ApiKey) -> Client:
        return self._clients[(key.tenant, key.sees_all)]


def caller(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
    header: Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))],
) -> ApiKey:
    """The caller's key, from `Authorization: Bearer <key>` or `X-API-Key: <key>`; 401 without one."""
    key = keyring(request).key_of(bearer.credentials if bearer else header or "")
    if key is None:
        raise HTTPException(401, "missing or unknown API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                            headers={"WWW-Authenticate": "Bearer"})
    return key


def keyring(request: Request) -> KeyRing:
    keys: KeyRing = request.app.state.keys
    return keys


class Allowed:
    """A dependency: the Client that sees the jobs the caller's key may see, if the key has `scope` (else 403)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, request: Request, key: Annotated[ApiKey, Depends(caller)]) -> Client:
        if not key.allows(self.scope):
            raise HTTPException(403, f"this API key lacks the {self.scope.value!r} scope "
                                     f"(it has: {', '.join(sorted(key.scopes))})")
        return keyring(request).client_of(key)


Submitter = Annotated[Client, Depends(Allowed(Scope.SUBMIT))]
Reader = Annotated[Client, Depends(Allowed(Scope.READ))]
Canceller = Annotated[Client, Depends(Allowed(Scope.CANCEL))]


def guard(access: Access) -> list[Any]:
    """Route dependencies for an `access` setting: none when open, an admin key otherwise."""
    return [] if access == "open" else [Depends(Allowed(Scope.ADMIN))]
