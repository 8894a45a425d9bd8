"""Prefix-aware routing: which worker holds a conversation's prefix, and its queue of its own.

Agents send the same long prefix on every turn; each worker keeps the KV of what it ran (its
prompt cache). With several workers behind one queue, a conversation's next turn lands on any
of them and most of the time prefills its whole history again. So:

- when a text job starts, the API records, for each prefix of its messages (hashed with the
  model and the tools), that the worker running it holds it (`held:<model>:<hash>` → worker
  name, expiring after PREFIX_TTL: a worker's RAM cache is bounded, so the claim must fade);
- a new interactive request looks up its own message prefixes, longest first, and if a live
  worker holds one and has a free slot, its job goes to that worker's own queue
  (`direct:<worker>`, which every worker serves before its model's shared queues); otherwise
  to the shared queue as before;
- a job left in the own queue of a worker that died goes back to the model's shared queue
  (`requeue_orphans`, run by every worker's maintenance and by the API when a relayed job
  waits too long), so nothing is lost.

Message-level hashes need no tokenizer in the API: a conversation's next turn repeats the
previous turn's messages exactly, so the previous turn's full message list is a prefix here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from rq import Queue
from rq.job import Job

from contract import registry
from contract.keys import Keys

log = logging.getLogger("mis.prefixes")

DIRECT = "direct:"
"""Prefix of a worker's own queue name: never parsed as a model's queue (contract/keys.py)."""
SHARED_QUEUE = "shared_queue"
"""job.meta key: the model's queue a routed job goes back to if its worker dies."""


def direct_queue(worker: str) -> str:
    return f"{DIRECT}{worker}"


def prefix_hashes(model: str, messages: Sequence[Any], tools: Any = None) -> list[str]:
    """One hash per message prefix (messages[:1], messages[:2], …), of the model, the tools
    and the messages as JSON: equal prefixes of equal conversations hash alike."""
    tools = [t.model_dump(mode="json") if hasattr(t, "model_dump") else t for t in tools or []]
    digest = hashlib.sha256(json.dumps([model, tools], sort_keys=True, default=str).encode())
    hashes = []
    for message in messages:
        dumped = message.model_dump(mode="json", exclude_none=True) if hasattr(message, "model_dump") else message
        digest.update(json.dumps(dumped, sort_keys=True).encode())
        hashes.append(digest.copy().hexdigest()[:32])
    return hashes


def holder(conn: redis.Redis, keys: Keys, model: str, hashes: Sequence[str]) -> tuple[str | None, int]:
    """The worker holding the longest of these prefixes, and how many messages it covers."""
    if not hashes:
        return None, 0
    found = conn.mget([keys.held_prefix(model, h) for h in hashes])
    for n in range(len(hashes), 0, -1):
        name = found[n - 1]
        if name:
            return (name.decode() if isinstance(name, bytes) else str(name)), n
    return None, 0


BUSY_MARGIN = 2
"""Jobs a prefix's holder may run beyond the least busy worker of its model and still be sent
the conversation: past that, a prefill elsewhere costs less than queueing behind it. Measured
(bench/prefix.py (b), two workers, 16 conversations): pinning every turn to its holder gave a
median time to first token of 2.03 s, above the shared queue's 1.52 s in that run; with this
margin 1.69–1.92 s against the shared queue's 3.73–4.04 s."""


def has_room(
    conn: redis.Redis, keys: Keys, worker: str, model: str, workers: list[registry.WorkerInfo] | None = None
) -> bool:
    """The model has several workers and this one is alive, has a free slot and is not much
    busier than the least busy of them: a job sent to it starts now, without queueing behind it.
    `workers`: the live workers if the caller has just read them."""
    live = workers if workers is not None else registry.live_workers(conn, keys)
    serving = [w for w in live if w.model == model and w.serving]
    if len(serving) < 2:  # one worker takes every job anyway: its own queue would add nothing
        return False
    info = next((w for w in serving if w.name == worker), None)
    if info is None or info.active_jobs >= info.capacity:
        return False
    return info.active_jobs <= min(w.active_jobs for w in serving) + BUSY_MARGIN


def requeue_orphans(conn: redis.Redis, keys: Keys, queue_names: Iterable[str] | None = None) -> int:
    """Move the jobs waiting in dead workers' own queues back to their models' shared queues;
    returns how many moved."""
    names = queue_names if queue_names is not None else [q.name for q in Queue.all(connection=conn)]
    moved = 0
    for name in names:
        if not name.startswith(DIRECT) or registry.is_alive(conn, keys, name.removeprefix(DIRECT)):
            continue
        queue = Queue(name, connection=conn)
        for job_id in queue.get_job_ids():
            job = Job.fetch(job_id, connection=conn) if conn.exists(f"rq:job:{job_id}") else None
            queue.remove(job_id)
            if job is None or not job.meta.get(SHARED_QUEUE):
                continue
            Queue(job.meta[SHARED_QUEUE], connection=conn).enqueue_job(job)
            moved += 1
            log.info("job %s: its worker %s is gone; back on %s", job_id, name.removeprefix(DIRECT), job.origin)
        if not queue.count:
            queue.delete(delete_jobs=False)
    return moved


def route(
    conn: redis.Redis,
    keys: Keys,
    spec: Any,
    messages: Sequence[Any],
    tools: Any,
    ttl: int,
    workers: list[registry.WorkerInfo] | None = None,
) -> None:
    """Mark an interactive chat `spec` (contract.queues.JobSpec) with its message prefixes, for
    its worker to publish, and send it to the worker holding the longest of them when that one
    has a free slot (else it stays on the model's shared queue). `workers`: the live workers if
    the caller has just read them — with fewer than two serving the model, no lookup is made."""
    hashes = prefix_hashes(spec.model, messages, tools)
    if not hashes:
        return
    spec.meta["prefixes"] = hashes
    spec.meta["prefix_ttl"] = ttl
    if workers is not None and sum(1 for w in workers if w.model == spec.model and w.serving) < 2:
        return  # one worker takes every job anyway: two round trips saved on every chat
    worker, _ = holder(conn, keys, spec.model, hashes)
    if worker is not None and has_room(conn, keys, worker, spec.model, workers):
        spec.meta[SHARED_QUEUE] = spec.queue
        spec.direct = direct_queue(worker)


def held_prefix_sets(keys: Keys, job: Job, worker: str) -> list[tuple[str, str, int]]:
    """The (key, value, ttl) writes saying `worker` holds a job's message prefixes (none for
    a job without them): batched with the rest of a job's start (runtime/burst.py)."""
    hashes = job.meta.get("prefixes") or []
    if not hashes:
        return []
    model = (job.kwargs.get("payload") or {}).get("model", "") if isinstance(job.kwargs, dict) else ""
    ttl = int(job.meta.get("prefix_ttl", 600))
    return [(keys.held_prefix(model, h), worker, ttl) for h in hashes]
