"""`GET /metrics`: Prometheus text exposition (format 0.0.4), behind the admin token.

gunicorn runs several processes, so nothing is counted in process memory: every counter and
histogram is a Redis hash (`Keys.metrics_*`) that all processes increment, and the collector
reads those hashes, rq's queues and registries and the worker registry at scrape time.

Hash fields are JSON arrays of label values (plus the bucket bound for histograms), so the
set of fields is bounded by the routes, methods, statuses and served models, never by
clients' input. Histogram buckets are stored per bucket (one HINCRBY per observation) and
made cumulative when scraped.

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
from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from rq import Queue
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)

from contract import registry
from contract.keys import Keys, parse_queue_name
from contract.stream import Event, EventType

from .auth import require_admin

log = logging.getLogger("mis.api")
bp = Blueprint("metrics", __name__)
bp.before_request(require_admin)

TTFT_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
JOB_STATES = {"started": StartedJobRegistry, "finished": FinishedJobRegistry,
              "failed": FailedJobRegistry, "canceled": CanceledJobRegistry}
BACKOFF_S = 5.0
"""Seconds a process stops recording after a Redis error."""

_paused_until = 0.0


# ---- recording ---------------------------------------------------------------------------

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
        pipe.hincrby(self.keys.metrics_ttft, _field(self.model, _bound(TTFT_BUCKETS, self.ttft)), 1)
        pipe.hincrbyfloat(self.keys.metrics_ttft, _field(self.model, "sum"), self.ttft)


# ---- exposition --------------------------------------------------------------------------

@bp.get("/metrics")
def metrics():
    ext = current_app.extensions["mis"]
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(RedisCollector(ext.conn, ext.keys))
    return Response(generate_latest(scrape), content_type=CONTENT_TYPE_PLAIN_0_0_4)


class RedisCollector:
    """A prometheus_client collector whose every value comes from Redis at scrape time."""

    def __init__(self, conn: redis.Redis, keys: Keys):
        self.conn, self.keys = conn, keys

    def collect(self):
        pipe = self.conn.pipeline(transaction=False)
        for key in (self.keys.metrics_requests, self.keys.metrics_ttft, self.keys.metrics_itl,
                    self.keys.metrics_tokens):
            pipe.hgetall(key)
        requests_, ttft, itl, tokens = (_decode(h) for h in pipe.execute())
        yield _requests_family(requests_)
        yield _histogram_family("mis_time_to_first_token_seconds",
                                "Time from a chat request's arrival to its first content delta.",
                                TTFT_BUCKETS, ttft)
        yield _histogram_family("mis_inter_token_seconds",
                                "Gaps between consecutive content deltas of one chat request.",
                                ITL_BUCKETS, itl)
        yield _tokens_family(tokens)
        yield from self._queue_families()
        yield _workers_family(registry.live_workers(self.conn, self.keys))

    def _queue_families(self):
        """Queue depths and registry counts for every rq queue, in one pipeline. Registries
        are counted from now on (ZCOUNT), which is what rq's cleanup would leave, without
        running that cleanup (a scrape must not change rq's state)."""
        queues = sorted(Queue.all(connection=self.conn), key=lambda q: q.name)
        now = time.time()
        pipe = self.conn.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(queue.key)
            for registry_class in JOB_STATES.values():
                pipe.zcount(registry_class(queue.name, connection=self.conn).key, now, "+inf")
        replies = iter(pipe.execute())
        depth = GaugeMetricFamily("mis_queue_depth", "Jobs waiting in a model's rq queue.",
                                  labels=["model", "kind", "priority"])
        jobs = GaugeMetricFamily("mis_jobs", "Jobs per rq queue and state.", labels=["queue", "state"])
        for queue in queues:
            queued = next(replies)
            jobs.add_metric([queue.name, "queued"], queued)
            for state in JOB_STATES:
                jobs.add_metric([queue.name, state], next(replies))
            parsed = parse_queue_name(queue.name)
            if parsed:
                kind, model, priority = parsed
                depth.add_metric([model, kind, priority], queued)
        return depth, jobs


def _decode(raw: dict) -> dict[tuple, float]:
    """A metrics hash as {label tuple: value}; fields that are not ours are skipped."""
    out = {}
    for field, value in raw.items():
        try:
            out[tuple(json.loads(field))] = float(value)
        except (ValueError, TypeError):
            continue
    return out


def _requests_family(counts: dict[tuple, float]) -> CounterMetricFamily:
    family = CounterMetricFamily("mis_http_requests", "HTTP requests by URL rule, method and status.",
                                 labels=["endpoint", "method", "status"])
    for labels, value in sorted(counts.items()):
        if len(labels) == 3:
            family.add_metric(list(labels), value)
    return family


def _tokens_family(counts: dict[tuple, float]) -> CounterMetricFamily:
    family = CounterMetricFamily("mis_tokens_generated", "Completion tokens of finished chat requests.",
                                 labels=["model"])
    for labels, value in sorted(counts.items()):
        if len(labels) == 1:
            family.add_metric(list(labels), value)
    return family


def _histogram_family(name: str, doc: str, bounds: tuple, fields: dict[tuple, float]):
    """Per-bucket counts from Redis, made cumulative with `+Inf` last."""
    family = HistogramMetricFamily(name, doc, labels=["model"])
    models = sorted({labels[0] for labels in fields if len(labels) == 2})
    les = [repr(float(b)) for b in bounds] + ["+Inf"]
    for model in models:
        running, buckets = 0.0, []
        for le in les:
            running += fields.get((model, le), 0.0)
            buckets.append((le, running))
        family.add_metric([model], buckets, sum_value=fields.get((model, "sum"), 0.0))
    return family


def _workers_family(workers: list[registry.WorkerInfo]) -> GaugeMetricFamily:
    """Every state for each (model, kind) that has a live worker, zeros included, so an alert
    on `state="error"` has a series to watch."""
    family = GaugeMetricFamily("mis_live_workers", "Live workers (heartbeat not lapsed) by state.",
                               labels=["model", "kind", "state"])
    counts = Counter((w.model, str(w.kind), str(w.state)) for w in workers)
    for model, kind in sorted({(m, k) for m, k, _ in counts}):
        for state in registry.WorkerState:
            family.add_metric([model, kind, str(state)], counts[(model, kind, str(state))])
    return family
