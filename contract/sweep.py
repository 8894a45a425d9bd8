"""Forgetting models nobody serves any more: their empty rq queues and their metric series.

A queue is created the first time a job is enqueued for a model (a request, a batch line, an
autoload), and rq lists it in `rq:queues` forever; the metrics hashes keep one series per
model forever too. So every model ever asked for — a load that failed, a model unloaded a
month ago — would stay on `/metrics`, `/admin/status` and the dashboard. Managers and workers
sweep now and then (`drop_idle`): a queue of a model no live worker serves is dropped once it
holds no job in any state (rq's own registry cleanup runs first, as its workers' maintenance
would), and a model's metric series go with its last queue.
"""

from __future__ import annotations

import json
import logging

import redis
from rq import Queue
from rq.registry import clean_registries

from contract import registry
from contract.keys import Keys, parse_queue_name

log = logging.getLogger(__name__)

# Checked and dropped in one step: a job enqueued meanwhile is never deleted with its queue.
_DROP_IF_EMPTY = """
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
for i = 3, #KEYS do
  if redis.call('ZCARD', KEYS[i]) > 0 then return 0 end
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


def drop_idle(conn: redis.Redis, keys: Keys) -> list[str]:
    """Drop the empty queues of models no live worker serves (loading counts as serving) and
    the metric series of models left with no queue and no worker. Returns the queues dropped."""
    served = {w.model for w in registry.live_workers(conn, keys)}
    drop = conn.register_script(_DROP_IF_EMPTY)
    dropped, kept_models = [], set(served)
    for queue in Queue.all(connection=conn):
        parsed = parse_queue_name(queue.name)
        if parsed is None:  # another application's queue
            continue
        model = parsed[1]
        if model not in served:
            clean_registries(queue)
            if drop(keys=[queue.redis_queues_keys, queue.key, *_registry_keys(queue)], args=[queue.key]):
                dropped.append(queue.name)
                continue
        kept_models.add(model)
    if dropped:
        log.info("dropped the idle queues %s", ", ".join(dropped))
    _forget_metrics(conn, keys, kept_models)
    return dropped


def _registry_keys(queue: Queue) -> list[str]:
    registries = (
        queue.started_job_registry,
        queue.deferred_job_registry,
        queue.scheduled_job_registry,
        queue.finished_job_registry,
        queue.failed_job_registry,
        queue.canceled_job_registry,
    )
    return [r.key for r in registries]


def _forget_metrics(conn: redis.Redis, keys: Keys, models: set[str]) -> None:
    """Per-model fields (label tuples whose first label is the model, api/telemetry.py) of
    models not in `models`."""
    for key in (keys.metrics_ttft, keys.metrics_itl, keys.metrics_tokens):
        stale = [f for f in conn.hkeys(key) if (model := _model_of(f)) is not None and model not in models]
        if stale:
            conn.hdel(key, *stale)


def _model_of(field: bytes | str) -> str | None:
    try:
        labels = json.loads(field)
    except ValueError:
        return None
    return labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None
