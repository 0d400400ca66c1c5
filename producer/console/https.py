"""Whether a console request reached the gateway over https, which decides the session cookie's
`Secure` flag: the request's own scheme (TLS served by uvicorn, or a proxy header uvicorn already
believed), X-Forwarded-Proto when the peer is a trusted proxy, or a setting that says always.

Without `Secure` a browser sends the cookie over plain http too; with it on a plain-http site other
than localhost the browser drops it and login fails. Hence no default of always: `--insecure-dev`
on http://localhost and a gateway behind a TLS proxy both keep working.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ANY_PROXY = "*"


def parse_proxies(entries: Iterable[str]) -> tuple[Network, ...] | None:
    """Trusted proxies as networks (an address is a /32 or /128); None for '*' (any peer).
    ValueError names an entry that is neither."""
    found: list[Network] = []
    for entry in entries:
        if entry == ANY_PROXY:
            return None
        try:
            found.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {entry!r} is not an IP address, a network (10.0.0.0/8) or '*'") from None
    return tuple(found)


@dataclass(frozen=True)
class CookiePolicy:
    """When the console's cookie is `Secure`: always, or per request (see `secure_for`)."""

    always_secure: bool = False
    trusted_proxies: tuple[Network, ...] | None = ()  # None: any peer's X-Forwarded-Proto is believed

    def secure_for(self, request: Request) -> bool:
        if self.always_secure or request.url.scheme == "https":
            return True
        forwarded = request.headers.get("x-forwarded-proto")
        if forwarded is None or not self._trusted(request.client.host if request.client else None):
            return False
        # The last value is the one the nearest proxy (the trusted one) added; earlier ones came from further away.
        return forwarded.split(",")[-1].strip().lower() == "https"

    def _trusted(self, peer: str | None) -> bool:
        if self.trusted_proxies is None:
            return True
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:  # a unix socket or a test client: no address to trust
            return False
        return any(address in network for network in self.trusted_proxies)


__all__ = ["ANY_PROXY", "CookiePolicy", "parse_proxies"]
