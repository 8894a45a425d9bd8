"""Hardening II, case 9: the queues and metric series of every model ever asked for stayed
forever (a failed load, a model unloaded long ago); managers and workers now sweep them."""

from __future__ import annotations

import json
import time

from rq import Queue

from contract.keys import Kind, Priority, queue_name
from contract.payloads import ChatJob, ChatMessage
from contract.queues import JobSpec, cancel_job, enqueue, fail_waiting
from contract.sweep import drop_idle

from .support import say_hi


def chat(model: str) -> ChatJob:
    return ChatJob(model=model, messages=[ChatMessage(role="user", content="hi")], max_tokens=3)


def listed(conn) -> set[str]:
    return {q.name for q in Queue.all(connection=conn)}


def test_queues_and_metric_series_of_models_nobody_serves_are_dropped(ctx, api_url, text_worker):
    conn, keys = ctx.conn, ctx.keys
    say_hi(api_url, "tiny-text", max_tokens=1)  # served: its queue stays, empty or not
    ghost, waiting = (
        queue_name(Kind.TEXT, "sweep-ghost", Priority.INTERACTIVE),
        queue_name(Kind.TEXT, "sweep-waiting", Priority.INTERACTIVE),
    )
    failed = enqueue(ctx, JobSpec.chat(chat("sweep-ghost"), Kind.TEXT, keep=1))
    fail_waiting(ctx, Kind.TEXT, "sweep-ghost", "model_unavailable", "loading model 'sweep-ghost' failed")
    queued = enqueue(ctx, JobSpec.chat(chat("sweep-waiting"), Kind.TEXT))
    for model in ("sweep-ghost", "tiny-text"):
        conn.hincrby(keys.metrics_tokens, json.dumps([model]), 3)
        conn.hincrby(keys.metrics_ttft, json.dumps([model, "+Inf"]), 1)
    try:
        assert ghost not in drop_idle(conn, keys)
        assert ghost in listed(conn)  # its failed job is still kept (failure_ttl 1 s): so is its queue
        time.sleep(1.2)
        assert ghost in drop_idle(conn, keys)
        names = listed(conn)
        assert (
            ghost not in names
            and waiting in names
            and queue_name(Kind.TEXT, "tiny-text", Priority.INTERACTIVE) in names
        )
        fields = {json.loads(f)[0] for key in (keys.metrics_tokens, keys.metrics_ttft) for f in conn.hkeys(key)}
        assert "sweep-ghost" not in fields and "tiny-text" in fields
        assert failed.id not in Queue(ghost, connection=conn).failed_job_registry.get_job_ids()
    finally:
        cancel_job(ctx, queued.id)
