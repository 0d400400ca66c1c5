"""The console's session cookie over HTTP: an expired (correctly signed) cookie is refused, and the
`Secure` flag follows https (the request's scheme, a trusted proxy's X-Forwarded-Proto, or a setting)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from producer import Client
from producer.console.session import COOKIE, Signer
from producer.gateway import GatewaySettings, create_app
from producer.tenants import load_api_keys

KEY = "session-key-" + uuid.uuid4().hex


def _log_in(http: TestClient, key: str = KEY) -> str:
    """The Set-Cookie header of a login (a redirect to the overview)."""
    response = http.post("/console/login", data={"api_key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["set-cookie"]


def test_an_expired_session_cookie_is_refused_and_sends_to_login(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("TEXTQ_CONSOLE_SECRET", secret)  # the gateway's signer: one the test can sign with
    app = create_app(client, GatewaySettings(keys=[KEY]))
    key = load_api_keys([KEY])[0]
    valid, _ = Signer(secret.encode()).issue(key)
    expired, session = Signer(secret.encode(), lifetime_s=-1).issue(key)  # signed right, ended a second ago
    with TestClient(app, follow_redirects=False) as http:
        assert http.get("/console/", headers={"Cookie": f"{COOKIE}={valid}"}).status_code == 200  # the signing is right
        refused = http.get("/console/", headers={"Cookie": f"{COOKIE}={expired}"})
        assert refused.status_code == 303 and refused.headers["location"] == "/console/login"
        # A change with the expired session's own CSRF token is refused the same way, before anything runs.
        post = http.post("/console/retry", data={"csrf": session.csrf, "model": "flaky"},
                         headers={"Cookie": f"{COOKIE}={expired}"})
        assert post.status_code == 303 and post.headers["location"] == "/console/login"
        assert http.get("/console/overview.json", headers={"Cookie": f"{COOKIE}={expired}"}).status_code == 303


@pytest.mark.parametrize(
    ("settings", "base_url", "peer", "headers", "secure"),
    [
        ({}, "http://testserver", "127.0.0.1", {}, False),
        ({}, "https://testserver", "127.0.0.1", {}, True),
        # X-Forwarded-Proto from a peer nobody said to trust: anyone can send the header.
        ({}, "http://testserver", "203.0.113.9", {"X-Forwarded-Proto": "https"}, False),
        ({"trusted_proxies": "203.0.113.0/24"}, "http://testserver", "203.0.113.9", {"X-Forwarded-Proto": "https"}, True),
        ({"trusted_proxies": "10.0.0.1"}, "http://testserver", "203.0.113.9", {"X-Forwarded-Proto": "https"}, False),
        ({"trusted_proxies": "*"}, "http://testserver", "198.51.100.7", {"X-Forwarded-Proto": "https"}, True),
        # Several proxies: the last value is the trusted one's, and it says http.
        ({"trusted_proxies": "*"}, "http://testserver", "198.51.100.7", {"X-Forwarded-Proto": "https, http"}, False),
        ({"secure_cookie": "always"}, "http://testserver", "127.0.0.1", {}, True),
    ],
)
def test_the_session_cookie_is_secure_when_served_over_https(
    client: Client, settings: dict[str, Any], base_url: str, peer: str, headers: dict[str, str], secure: bool
) -> None:
    app = create_app(client, GatewaySettings(keys=[KEY], **settings))
    with TestClient(app, base_url=base_url, client=(peer, 50000), headers=headers) as http:
        cookie = _log_in(http)
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert ("secure" in attributes) is secure, cookie
    assert "httponly" in attributes and "samesite=strict" in attributes


def test_insecure_dev_keeps_working_over_plain_http_on_localhost(client: Client) -> None:
    app = create_app(client, GatewaySettings(insecure_dev=True))
    with TestClient(app, base_url="http://localhost") as http:
        cookie = _log_in(http, key="anything")
        assert "secure" not in [a.strip().lower() for a in cookie.split(";")]
        overview = http.get("/console/", follow_redirects=False)  # the jar sends the cookie back over http
        assert overview.status_code == 200 and "Overview" in overview.text


def test_a_trusted_proxy_that_is_not_an_address_stops_the_start() -> None:
    with pytest.raises(ValidationError, match=r"trusted proxy 'proxy\.internal' is not an IP address"):
        GatewaySettings(keys=[KEY], trusted_proxies="10.0.0.0/8,proxy.internal")
