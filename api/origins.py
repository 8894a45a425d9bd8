"""Requests a browser makes on a web page's behalf: the `Host` a request names, the `Origin`
of a state-changing one, and CORS for the browser apps the operator allows.

A server on loopback with no keys (a laptop's default) is reachable by every page its user
opens: a page can POST a form to `http://127.0.0.1:11440/admin/load` (CSRF), or make its own
name resolve to 127.0.0.1 and then read our answers as its own origin (DNS rebinding). So:

- `Host` must name this server (`ALLOWED_HOSTS`; by default, on a loopback bind, the bound
  address, localhost, 127.0.0.1 and [::1], any port) → else 400 `invalid_host`. On a
  non-loopback bind any Host is accepted unless ALLOWED_HOSTS is set (API keys guard it there).
- A POST, PUT, PATCH or DELETE whose `Origin` is neither this server itself nor one of
  `CORS_ORIGINS` → 403 `origin_not_allowed`. Clients that are not browsers send no Origin.
- `CORS_ORIGINS` (default none; `*` for any) turns on CORS for those origins: preflights are
  answered, and answers carry Access-Control-Allow-Origin (credentials are Bearer headers,
  never cookies, so no Allow-Credentials).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request

from contract.settings import Settings

from .auth import is_loopback
from .errors import APIError

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
PREFLIGHT_MAX_AGE = 600


def init_app(app: Flask, settings: Settings) -> None:
    app.before_request(check_request)
    app.after_request(add_cors_headers)


def allowed_hosts(settings: Settings) -> set[str] | None:
    """Host names (no port) requests may name; None: any."""
    if settings.allowed_hosts:
        return {h.lower().strip("[]") for h in settings.allowed_hosts}
    if is_loopback(settings.host):
        return {settings.host.lower().strip("[]"), *LOOPBACK_NAMES}
    return None


def _host_name(host_header: str) -> str:
    """`example.com:8080` → `example.com`, `[::1]:80` → `::1`."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0].lower()
    return host_header.rpartition(":")[0].lower() if host_header.count(":") == 1 else host_header.lower()


def _cors_allows(origin: str, settings: Settings) -> bool:
    return "*" in settings.cors_origins or origin.rstrip("/") in settings.cors_origins


def _same_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


def check_request() -> Response | None:
    settings: Settings = current_app.extensions["mis"].settings
    hosts = allowed_hosts(settings)
    if hosts is not None and _host_name(request.host) not in hosts:
        raise APIError(400, "the Host header does not name this server (ALLOWED_HOSTS)", code="invalid_host")
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return _preflight(origin, settings)
    if request.method in UNSAFE_METHODS and not _same_origin(origin) and not _cors_allows(origin, settings):
        raise APIError(403, "requests from this web page's origin are not allowed (CORS_ORIGINS)",
                       code="origin_not_allowed")  # fmt: skip
    return None


def _preflight(origin: str, settings: Settings) -> Response:
    if not _cors_allows(origin, settings):
        raise APIError(403, "requests from this web page's origin are not allowed (CORS_ORIGINS)",
                       code="origin_not_allowed")  # fmt: skip
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Request-Id"
    response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return response


def add_cors_headers(response: Response) -> Response:
    origin = request.headers.get("Origin")
    settings: Settings = current_app.extensions["mis"].settings
    if origin and settings.cors_origins and _cors_allows(origin, settings):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After"
        response.vary.add("Origin")
    return response
