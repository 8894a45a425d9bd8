"""Recording what `/metrics` shows (api/metrics.py): request counts, time to first token,
inter-token gaps and generated tokens, as Redis hashes every API process increments.

Hash fields are JSON arrays of label values (plus the bucket bound for histograms), so the
set of fields is bounded by the routes, methods, statuses and served models, never by
clients' input. Histogram buckets are stored per bucket (one HINCRBY per observation).

Recording never breaks a request: a Redis error is logged at debug level, and after one the
process stops recording for a few seconds so a dead Redis does not cost every request a
connect timeout on top of its own.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections import Counter

import redis
from flask import current_app, request

from contract.keys import Keys
from contract.stream import Event, EventType

log = logging.getLogger("mis.api")

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
BACKOFF_S = 5.0
"""Seconds a process stops recording after a Redis error."""

_paused_until = 0.0


def _field(*labels) -> str:
    return json.dumps(labels, separators=(",", ":"))


def _bound(bounds: tuple, value: float) -> str:
    """The `le` of the (non-cumulative) bucket a value falls in."""
    i = bisect.bisect_left(bounds, value)
    return repr(float(bounds[i])) if i < len(bounds) else "+Inf"


def _write(conn: redis.Redis, fill) -> None:
    """Run `fill(pipe)` and execute it; a Redis failure is logged, never raised."""
    global _paused_until
    if time.monotonic() < _paused_until:
        return
    try:
        pipe = conn.pipeline(transaction=False)
        fill(pipe)
        pipe.execute()
    except redis.exceptions.RedisError:
        _paused_until = time.monotonic() + BACKOFF_S
        log.debug("could not record metrics", exc_info=True)
    except Exception:  # a metrics bug must not break a request either
        log.debug("could not record metrics", exc_info=True)


def count_request(response):
    """An app-level `after_request` hook: one HINCRBY per request. The label is the URL rule
    (`/v1/models/<path:model_id>`), never the raw path, so clients cannot grow the hash."""
    try:
        ext = current_app.extensions["mis"]
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"
        field = _field(rule, method, str(response.status_code))
        _write(ext.conn, lambda pipe: pipe.hincrby(ext.keys.metrics_requests, field, 1))
    except Exception:  # metrics must never turn a good response into a 500
        log.debug("could not count a request", exc_info=True)
    return response


class GenerationTimer:
    """Times one chat request's content deltas as the API produces them.

    `observe` is called for every relayed event. The time to first token is measured at the
    first delta but written at the next event (or at `finish`), after the first chunk has gone
    out, so the write never delays it. Inter-token gaps are aggregated here and written once,
    with the generated-token count, by `finish`: never one Redis call per token.
    """

    def __init__(self, conn: redis.Redis, keys: Keys, model: str, started: float):
        self.conn, self.keys, self.model, self.started = conn, keys, model, started
        self.last: float | None = None
        self.ttft: float | None = None
        self.ttft_written = False
        self.gaps: Counter[str] = Counter()
        self.gap_sum = 0.0
        self.finished = False

    def observe(self, event: Event | None) -> None:
        now = time.perf_counter()
        if self.ttft is not None and not self.ttft_written and (event is None or not event.is_terminal):
            self.ttft_written = True
            _write(self.conn, self._add_ttft)
        if event is None or event.type != EventType.DELTA:
            return
        if self.last is None:
            self.ttft = now - self.started
        else:
            gap = now - self.last
            self.gaps[_bound(ITL_BUCKETS, gap)] += 1
            self.gap_sum += gap
        self.last = now

    def finish(self, usage: dict | None) -> None:
        """At the request's end, whatever the outcome: one pipeline for what is left."""
        if self.finished:
            return
        self.finished = True
        tokens = int((usage or {}).get("completion_tokens") or 0)
        pending_ttft = self.ttft is not None and not self.ttft_written
        if not (pending_ttft or self.gaps or tokens):
            return
        self.ttft_written = True

        def fill(pipe):
            if pending_ttft:
                self._add_ttft(pipe)
            for bound, n in self.gaps.items():
                pipe.hincrby(self.keys.metrics_itl, _field(self.model, bound), n)
            if self.gaps:
                pipe.hincrbyfloat(self.keys.metrics_itl, _field(self.model, "sum"), self.gap_sum)
            if tokens:
                pipe.hincrby(self.keys.metrics_tokens, _field(self.model), tokens)

        _write(self.conn, fill)

    def _add_ttft(self, pipe) -> None:
        assert self.ttft is not None  # called once the first token was seen
        pipe.hincrby(self.keys.metrics_ttft, _field(self.model, _bound(TTFT_BUCKETS, self.ttft)), 1)
        pipe.hincrbyfloat(self.keys.metrics_ttft, _field(self.model, "sum"), self.ttft)


# ---- exposition --------------------------------------------------------------------------
