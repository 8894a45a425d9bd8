"""Every error a client sees, shaped as OpenAI's: {"error": {message, type, param, code}}.

Exceptions are translated once, here, at the boundary:

    APIError                      raised by our views with status, type, code, param
    pydantic.ValidationError      → 400 invalid_request_error, param = the field
    werkzeug HTTPException        → its status (404 route, 405, 413 body too large, ...)
    redis ConnectionError/Timeout → 503 service_unavailable (Redis down or unreachable)
    anything else                 → 500 with a generic message; the traceback goes to the log

`as_api_error` is that translation; `render` shapes the answer (the Messages API's
blueprint renders the same errors in Anthropic's shape, api/anthropic_shape.py).

No response ever carries a traceback, a file path, a Redis URL or a secret. Every response
carries `X-Request-Id` (api/request_id.py); a 500 names that id, and the log line with the
traceback carries it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from . import request_id

log = logging.getLogger("mis.api")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = error_type or _TYPE_BY_STATUS.get(status, "api_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def redis_unavailable() -> APIError:
    return APIError(
        503,
        "the job queue (Redis) is unreachable; try again shortly",
        code="redis_unavailable",
        headers={"Retry-After": "5"},
    )


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str | None:
    """A field path as clients know it: pydantic also names union members in `loc`
    (`content.str`, `list[...]`), which mean nothing to a client."""
    parts = [str(p) for p in loc if isinstance(p, int) or (p.isidentifier() and p.lower() not in _TYPE_NAMES)]
    return ".".join(parts) or None


def from_validation_error(exc: ValidationError) -> APIError:
    first = exc.errors(include_url=False, include_input=False)[0]
    param = _param(first["loc"])
    message = first["msg"]
    return APIError(
        400,
        f"{param}: {message}" if param else message,
        param=param,
        code="invalid_value" if first["type"] != "missing" else "missing_required_parameter",
    )


def render(error: APIError, body: Callable[[APIError], dict] = APIError.body):
    """The response for an error, its body shaped by `body` (OpenAI's unless a blueprint
    answers in another API's shape: api/messages.py)."""
    # One log line per error answer, with the request id (api/request_id.py): what a client
    # reports can be found. 5xx are warnings: something on our side needs a look.
    log.log(
        logging.WARNING if error.status >= 500 else logging.INFO,
        "%s %s -> %d %s: %s",
        request.method,
        request.path,
        error.status,
        error.code,
        error.message,
    )
    response = jsonify(body(error))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def from_http_exception(exc: HTTPException) -> APIError:
    messages = {404: "no such endpoint", 405: "method not allowed for this endpoint", 413: "request body too large"}
    status = exc.code or 500
    code = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
    # 405 must say which methods the endpoint takes (RFC 9110); werkzeug knows them.
    allowed = getattr(exc, "valid_methods", None)
    headers = {"Allow": ", ".join(allowed)} if allowed else None
    return APIError(status, messages.get(status, exc.description or exc.name), code=code, headers=headers)


def unexpected_error(exc: Exception) -> APIError:
    log.exception("unhandled error in %s %s", request.method, request.path)
    return APIError(
        500, f"internal server error (request id {request_id.current()})", error_type="api_error", code="internal_error"
    )


def as_api_error(exc: Exception) -> APIError:
    """Any exception a request raised, as the error its client gets: the one translation,
    whichever shape renders it."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        return from_validation_error(exc)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return redis_unavailable()
    if isinstance(exc, HTTPException):
        return from_http_exception(exc)
    return unexpected_error(exc)


def init_app(app: Flask) -> None:
    app.register_error_handler(APIError, render)
    app.register_error_handler(ValidationError, lambda e: render(from_validation_error(e)))
    app.register_error_handler(redis.exceptions.ConnectionError, lambda e: render(redis_unavailable()))
    app.register_error_handler(redis.exceptions.TimeoutError, lambda e: render(redis_unavailable()))
    app.register_error_handler(HTTPException, lambda e: render(from_http_exception(e)))
    app.register_error_handler(Exception, lambda e: render(unexpected_error(e)))


def file_not_found(file_id: str) -> APIError:
    return APIError(
        404, f"no file {file_id!r} is kept here (unknown, or expired)", param="file_id", code="file_not_found"
    )
