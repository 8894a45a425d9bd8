"""`GET /metrics`: Prometheus text exposition (format 0.0.4), behind the admin token.

gunicorn runs several processes, so nothing is counted in process memory: every counter and
histogram is a Redis hash (`Keys.metrics_*`) that all processes increment (api/telemetry.py
records them), and the collector here reads those hashes, rq's queues and registries and the
worker registry at scrape time. Histogram buckets are stored per bucket and made cumulative
when scraped.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import redis
from flask import Blueprint, Response, current_app
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

from .auth import require_admin
from .telemetry import ITL_BUCKETS, TTFT_BUCKETS

log = logging.getLogger("mis.api")
bp = Blueprint("metrics", __name__)
bp.before_request(require_admin)

JOB_STATES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,
    "failed": FailedJobRegistry,
    "canceled": CanceledJobRegistry,
}


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
        for key in (
            self.keys.metrics_requests,
            self.keys.metrics_ttft,
            self.keys.metrics_itl,
            self.keys.metrics_tokens,
        ):
            pipe.hgetall(key)
        requests_, ttft, itl, tokens = (_decode(h) for h in pipe.execute())
        yield _requests_family(requests_)
        yield _histogram_family(
            "mis_time_to_first_token_seconds",
            "Time from a chat request's arrival to its first content delta.",
            TTFT_BUCKETS,
            ttft,
        )
        yield _histogram_family(
            "mis_inter_token_seconds", "Gaps between consecutive content deltas of one chat request.", ITL_BUCKETS, itl
        )
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
        depth = GaugeMetricFamily(
            "mis_queue_depth", "Jobs waiting in a model's rq queue.", labels=["model", "kind", "priority"]
        )
        jobs = GaugeMetricFamily("mis_jobs", "Jobs per rq queue and state.", labels=["queue", "state"])
        for queue in queues:
            queued = next(replies)
            jobs.add_metric([queue.name, "queued"], queued)
            for state in JOB_STATES:
                jobs.add_metric([queue.name, state], next(replies))
            labels = queue_labels(queue.name)
            if labels:
                depth.add_metric(list(labels), queued)
        return depth, jobs


def queue_labels(name: str) -> tuple[str, str, str] | None:
    """(model, kind, priority) labels of one of our queues; None for another application's."""
    parsed = parse_queue_name(name)
    if parsed is None:
        return None
    kind, model, priority = parsed
    return model, kind.value, priority.value


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
    family = CounterMetricFamily(
        "mis_http_requests", "HTTP requests by URL rule, method and status.", labels=["endpoint", "method", "status"]
    )
    for labels, value in sorted(counts.items()):
        if len(labels) == 3:
            family.add_metric(list(labels), value)
    return family


def _tokens_family(counts: dict[tuple, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "mis_tokens_generated", "Completion tokens of finished chat requests.", labels=["model"]
    )
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
    family = GaugeMetricFamily(
        "mis_live_workers", "Live workers (heartbeat not lapsed) by state.", labels=["model", "kind", "state"]
    )
    counts = Counter((w.model, str(w.kind), str(w.state)) for w in workers)
    for model, kind in sorted({(m, k) for m, k, _ in counts}):
        for state in registry.WorkerState:
            family.add_metric([model, kind, str(state)], counts[(model, kind, str(state))])
    return family
