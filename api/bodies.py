"""Reading request bodies, the one way: within a time limit, within the size limit (chunked
bodies too), and JSON only if it is sane — bounded nesting and text that can be encoded.

    slow body (a byte a second)          → 408 request_timeout      (BODY_READ_TIMEOUT)
    over MAX_BODY_BYTES, chunked or not  → 413 request_too_large
    malformed chunked encoding           → 400 invalid_body
    not JSON / nested past MAX_JSON_DEPTH → 400 invalid_json
    a string with a lone surrogate       → 400 invalid_value, param = the field's path

`read_body` runs before every view (an app-level hook) for methods that carry a body, so no
view can forget it; `json_body` is what views call.
"""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Flask, current_app, request
from werkzeug.exceptions import ClientDisconnected

from contract.settings import Settings

from .errors import APIError

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
DRAIN_BYTES = 4 * 1024 * 1024
"""Of an oversized body, how much more is read so the client still gets its 413."""
MAX_JSON_DEPTH = 64
"""Nesting of arrays and objects a request may use; ours need 6 (chat content parts)."""

try:  # the API runs under gunicorn's gevent worker; a timeout needs the gevent hub
    import gevent

    _Timeout: Any = gevent.Timeout
except ImportError:  # pragma: no cover - gevent is in the api extra
    _Timeout = None


def init_app(app: Flask) -> None:
    app.before_request(read_body)


def read_body() -> None:
    """Read the whole body now, within MAX_BODY_BYTES and BODY_READ_TIMEOUT, and put it back
    as a plain stream of known length: chunked or not, no view reads a socket afterwards, and
    a client that sends slowly holds no connection past the timeout."""
    if request.method not in BODY_METHODS:
        return
    settings: Settings = current_app.extensions["mis"].settings
    environ = request.environ
    declared = request.content_length
    if declared is not None and declared > settings.max_body_bytes:
        _drain(DRAIN_BYTES)
        raise _too_large(settings)
    timer = _Timeout(settings.body_read_timeout) if _Timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        data = _read_bounded(environ["wsgi.input"], settings.max_body_bytes, declared)
    except BaseException as exc:  # gevent's Timeout is a BaseException
        if timer is not None and exc is timer:
            raise APIError(408, f"the request body took longer than {settings.body_read_timeout} s to arrive "
                           "(BODY_READ_TIMEOUT)", code="request_timeout") from None  # fmt: skip
        if isinstance(exc, Exception) and _is_framing_error(exc):
            raise APIError(400, "the request body's chunked encoding is malformed", code="invalid_body") from None
        raise
    finally:
        if timer is not None:
            timer.close()
    if data is None:
        _drain(DRAIN_BYTES)
        raise _too_large(settings)
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input_terminated"] = False


def _read_bounded(stream, most: int, declared: int | None) -> bytes | None:
    """The body's bytes, or None when there are more than `most`."""
    buffer = io.BytesIO()
    left = declared if declared is not None else None
    while left is None or left > 0:
        piece = stream.read(65536 if left is None else min(65536, left))
        if not piece:
            if left:  # fewer bytes than Content-Length said, and the client stopped
                raise ClientDisconnected()
            break
        buffer.write(piece)
        if left is not None:
            left -= len(piece)
        if buffer.tell() > most:
            return None
    return buffer.getvalue()


def _drain(most: int) -> None:
    """Read (and drop) what is left of an oversized body, up to `most` bytes: a socket closed
    with unread input is reset, and the client would lose our 413 with it."""
    stream = request.environ.get("wsgi.input")
    left = most
    try:
        while stream is not None and left > 0 and (piece := stream.read(min(65536, left))):
            left -= len(piece)
    except Exception:  # a broken body: the 413 stands, whether it arrives or not
        pass


def _too_large(settings: Settings) -> APIError:
    return APIError(413, f"the request body is larger than {settings.max_body_bytes} bytes (MAX_BODY_BYTES)",
                    code="request_too_large")  # fmt: skip


def _is_framing_error(exc: Exception) -> bool:
    """gunicorn's errors for a body it cannot de-chunk (InvalidChunkSize, ChunkMissingTerminator, …)."""
    return type(exc).__module__.startswith("gunicorn.http")


def json_body() -> dict:
    """The request's JSON object: 400 for anything else, or for JSON too deep or with text
    that cannot be encoded (a lone UTF-16 surrogate, which tokenizers cannot take)."""
    data = request.get_data(cache=True)
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    check_json(body)
    return body


def check_json(value: Any, prefix: str = "") -> None:
    """Bounded depth and encodable text, checked without recursion (a deep value cannot
    exhaust the stack here)."""
    stack: list[tuple[Any, str, int]] = [(value, prefix, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep", code="invalid_json")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_text(key, path)
                stack.append((sub, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}.{i}", depth + 1) for i, sub in enumerate(item))


def _check_text(text: str, path: str) -> None:
    if text.isascii():  # base64 images and most text: no copy made to find out
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "text must be valid Unicode: it holds a lone surrogate (\\ud800-\\udfff)",
                       param=path or None, code="invalid_value") from None  # fmt: skip
