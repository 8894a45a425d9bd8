"""The worker registry: one Redis hash per worker, refreshed by its heartbeat with a TTL.

It is how the API learns which models are live (`/v1/models`), which worker holds a job
(to notice one that died mid-job) and, later, what `/admin/status` shows. rq keeps its own
worker records; ours adds the model, kind and state, and expires within seconds of a death.
"""
from __future__ import annotations

import time
from enum import StrEnum

import redis
from pydantic import BaseModel

from .keys import Keys, Kind


class WorkerState(StrEnum):
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    ERROR = "error"
    STOPPING = "stopping"


SERVING_STATES = frozenset({WorkerState.IDLE, WorkerState.BUSY})


class WorkerInfo(BaseModel):
    name: str
    """rq's worker name, so `job.worker_name` leads straight to this entry."""
    model: str
    kind: Kind
    host: str
    pid: int
    state: WorkerState = WorkerState.LOADING
    error: str = ""
    capacity: int = 1
    active_jobs: int = 0
    jobs_done: int = 0
    tokens_generated: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0

    @property
    def serving(self) -> bool:
        return self.state in SERVING_STATES


def publish(conn: redis.Redis, keys: Keys, info: WorkerInfo, ttl: int) -> None:
    """Write the whole entry and push its expiry `ttl` seconds out (one round trip)."""
    info.heartbeat_at = time.time()
    fields = {k: str(v) for k, v in info.model_dump(mode="json").items()}
    pipe = conn.pipeline(transaction=False)
    pipe.hset(keys.worker(info.name), mapping=fields)
    pipe.expire(keys.worker(info.name), ttl)
    pipe.zadd(keys.workers, {info.name: info.heartbeat_at})
    pipe.execute()


def remove(conn: redis.Redis, keys: Keys, name: str) -> None:
    pipe = conn.pipeline(transaction=False)
    pipe.delete(keys.worker(name))
    pipe.zrem(keys.workers, name)
    pipe.execute()


def is_alive(conn: redis.Redis, keys: Keys, name: str) -> bool:
    return bool(conn.exists(keys.worker(name)))


def live_workers(conn: redis.Redis, keys: Keys) -> list[WorkerInfo]:
    """Entries whose heartbeat has not lapsed; prunes names of expired ones from the index."""
    names = [n.decode() for n in conn.zrange(keys.workers, 0, -1)]
    if not names:
        return []
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    workers, dead = [], []
    for name, raw in zip(names, pipe.execute(), strict=True):
        if not raw:
            dead.append(name)
            continue
        workers.append(WorkerInfo.model_validate({k.decode(): v.decode() for k, v in raw.items()}))
    if dead:
        conn.zrem(keys.workers, *dead)
    return workers


def serving_models(workers: list[WorkerInfo]) -> dict[str, list[WorkerInfo]]:
    """Model id -> workers that can take its jobs now."""
    models: dict[str, list[WorkerInfo]] = {}
    for info in workers:
        if info.serving:
            models.setdefault(info.model, []).append(info)
    return models
