"""Admin authentication: `ADMIN_TOKEN` as a Bearer token on /admin, /metrics and /rq.

Browsers cannot send a Bearer token, so HTTP Basic with the token as the password (any user
name) is accepted too, and /rq's 401 asks for it: rq-dashboard opens in a browser.

Without a token the admin surface is open only when the server is bound to loopback and the
request comes from loopback (a single-user machine); bound anywhere else it is refused. The
startup log says which of the three applies. Tokens are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging

from flask import current_app, request

from contract.settings import Settings

from .errors import APIError

log = logging.getLogger("mis.api")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe_admin_access(settings: Settings) -> str:
    """One line for the startup log."""
    if settings.admin_token:
        return "admin endpoints (/admin, /metrics, /rq) require the ADMIN_TOKEN bearer token"
    if is_loopback(settings.host):
        return (
            "admin endpoints (/admin, /metrics, /rq) are open to loopback clients: no ADMIN_TOKEN "
            "is set and the server is bound to loopback"
        )
    return (
        "admin endpoints (/admin, /metrics, /rq) are DISABLED: the server is not bound to loopback "
        "and no ADMIN_TOKEN is set"
    )


def require_admin() -> None:
    """A `before_request` hook for admin blueprints: raises 401/403 unless allowed."""
    settings: Settings = current_app.extensions["mis"].settings
    if settings.admin_token:
        given = _presented_token()
        if given is None:
            challenge = 'Basic realm="mlx-inference-server admin"' if request.path.startswith("/rq") else "Bearer"
            raise APIError(
                401,
                "this endpoint needs the admin token: Authorization: Bearer <ADMIN_TOKEN>",
                code="missing_admin_token",
                headers={"WWW-Authenticate": challenge},
            )
        if not hmac.compare_digest(given.encode(), settings.admin_token.encode()):
            raise APIError(403, "the admin token is not valid", code="invalid_admin_token")
        return
    if not (is_loopback(settings.host) and is_loopback(request.remote_addr)):
        raise APIError(
            403, "admin endpoints are disabled: set ADMIN_TOKEN, or bind the server to loopback", code="admin_disabled"
        )


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value if scheme.lower() == "bearer" and value else None


def _presented_token() -> str | None:
    """The token from `Bearer <token>`, or the password of HTTP Basic credentials."""
    token = bearer_token()
    if token is not None:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return password
    return None
