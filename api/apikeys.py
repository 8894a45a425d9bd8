"""API keys: `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's clients
send it) on every `/v1/*` request.

Keys come from `API_KEYS` (comma-separated) and `API_KEYS_FILE` (one key per line, `#` starts
a comment). The file is re-read when its modification time changes, so keys can be added or
revoked without a restart; if it cannot be read, the keys read last stay in force (an
editor's save must not lock every client out) and the log says so.

With no keys configured, `/v1/*` is open only on a loopback bind (a single-user machine);
bound anywhere else it is refused with 403 `api_keys_required`, and the startup log warns.
A configured but empty key file opens nothing: every request is 401.

Keys are compared in constant time: the presented key and every configured key are hashed
(SHA-256) and all digests are compared with `hmac.compare_digest`, without stopping at a
match, so the time depends neither on which key matched nor on how much of a wrong key was
right. The admin token is a separate secret and is never accepted here; a key equal to it is
refused at start (settings) or skipped with an error (the key file).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading

from flask import Flask, current_app, request

from contract.settings import Settings

from .auth import bearer_token, is_loopback
from .errors import APIError

log = logging.getLogger("mis.api")

PREFIX = "/v1"
"""Every path under it needs a key: unknown /v1 paths too, so routes are not revealed."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def read_key_file(path: str, admin_token: str = "") -> list[str]:
    """Keys from a file: one per line, blank lines and `#` comments ignored. Raises OSError."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    keys = [k for k in lines if k]
    if admin_token and admin_token in keys:
        log.error("API_KEYS_FILE holds the admin token; that line is ignored (the two must differ)")
        keys = [k for k in keys if k != admin_token]
    return keys


class KeyRing:
    """The configured keys, as digests; the key file is re-read when it changes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.fixed = [_digest(k) for k in settings.api_keys]
        self.from_file: list[bytes] = []
        self.file_stamp: tuple[int, int] | None = None
        self.lock = threading.Lock()
        if settings.api_keys_file:
            self._load_file(strict=True)

    @property
    def configured(self) -> bool:
        return self.settings.api_keys_configured

    def matches(self, given: str) -> bool:
        if self.settings.api_keys_file:
            self._load_file(strict=False)
        presented = _digest(given)
        found = False
        for known in self.fixed + self.from_file:
            found |= hmac.compare_digest(presented, known)
        return found

    def _load_file(self, strict: bool) -> None:
        path = self.settings.api_keys_file
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self.file_stamp:
                return
            with self.lock:
                keys = read_key_file(path, self.settings.admin_token)
                self.from_file, self.file_stamp = [_digest(k) for k in keys], stamp
        except OSError as exc:
            if strict:  # at start: refuse to serve with a key file that cannot be read
                raise RuntimeError(f"API_KEYS_FILE cannot be read: {exc.strerror}") from None
            log.warning("API_KEYS_FILE cannot be read (%s); the keys read last stay in force", exc.strerror)
            return
        log.info("API keys: %d from API_KEYS, %d from API_KEYS_FILE", len(self.fixed), len(self.from_file))


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["mis_api_keys"] = KeyRing(settings)
    app.before_request(require_api_key)


def require_api_key() -> None:
    """An app-level `before_request` hook: raises 401/403 for /v1/* unless allowed."""
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return
    ring: KeyRing = current_app.extensions["mis_api_keys"]
    if not ring.configured:
        if is_loopback(ring.settings.host):
            return
        raise APIError(
            403,
            "the API is disabled: the server is bound beyond loopback and no API keys are set; "
            "set API_KEYS or API_KEYS_FILE, or bind to loopback (HOST=127.0.0.1)",
            code="api_keys_required",
        )
    # Anthropic's clients send the key as `x-api-key` (api/messages.py); either header works.
    value = (bearer_token() or request.headers.get("X-Api-Key") or "").strip()
    if not value:
        raise APIError(
            401,
            "this endpoint needs an API key: Authorization: Bearer <key> (or x-api-key: <key>)",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not ring.matches(value):
        raise APIError(
            401,
            "the API key is not valid",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def describe_api_access(settings: Settings) -> tuple[int, str]:
    """(log level, one line) for the startup log."""
    if settings.api_keys_configured:
        return logging.INFO, "/v1 endpoints require an API key (API_KEYS / API_KEYS_FILE)"
    if is_loopback(settings.host):
        return logging.INFO, (
            "/v1 endpoints are open without a key: no API_KEYS are set and the server is bound to loopback"
        )
    return logging.WARNING, (
        "\n  " + "!" * 78 + "\n"
        f"  NO API KEYS: the server is bound to {settings.host}, beyond loopback, and neither API_KEYS nor\n"
        "  API_KEYS_FILE is set, so every /v1 request is REFUSED (403 api_keys_required).\n"
        "  Set API_KEYS=<key>[,<key>...] or API_KEYS_FILE=<path>, or bind to loopback.\n"
        "  " + "!" * 78
    )
