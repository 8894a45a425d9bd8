"""Request ids: every response carries `X-Request-Id`, and every log line written while a
request is handled carries the same id, so a client's report leads straight to the log.

The id is made here for each request (`req_<hex>`); a chat completion replaces it with its
completion id (`chatcmpl-<job id>`) as soon as it has a job id, so one id names the
response, the rq job, its token stream and the log lines about it. Ids a client sends are
not trusted (they would land in our logs verbatim) and not echoed.

The `mis` loggers get one handler in the API process whose format shows the id; gunicorn's
access log shows it too (`access_log_format` in api/gunicorn_conf.py reads the response
header).
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, g, has_request_context

HEADER = "X-Request-Id"
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s [%(request_id)s] %(message)s"


def current() -> str:
    """The id of the request being handled, or "-" outside one."""
    return g.get("request_id", "-") if has_request_context() else "-"


def assign(request_id: str) -> None:
    """Name the current request (a chat completion does, once it has its job id)."""
    g.request_id = request_id


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (the current request's id, or "-")."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current()
        return True


def init_app(app: Flask) -> None:
    app.before_request(_new_id)
    app.after_request(_add_header)
    _log_with_ids(logging.getLogger("mis"))


def _new_id() -> None:
    g.request_id = f"req_{uuid.uuid4().hex}"


def _add_header(response):
    if "request_id" not in g:  # an error before our before_request hook ran
        _new_id()
    response.headers[HEADER] = g.request_id
    return response


def _log_with_ids(logger: logging.Logger) -> None:
    """One handler per process (apps built again, as tests do, reuse it)."""
    if any(isinstance(f, RequestIdFilter) for h in logger.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S %z"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
