"""The worker registry: one Redis hash per worker, refreshed by its heartbeat with a TTL.

Managers (managers/manager.py) publish entries the same way, under `manager:<name>` and the
`managers` index: their machine's memory and the workers they run.

It is how the API learns which models are live (`/v1/models`), which worker holds a job
(to notice one that died mid-job) and, later, what `/admin/status` shows. rq keeps its own
worker records; ours adds the model, kind and state, and expires within seconds of a death.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import cast

import redis
from pydantic import BaseModel

from contract.keys import Keys, Kind


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
    context_length: int = 0
    """Tokens the model attends to (prompt + completion), known once loaded; 0 before."""
    active_jobs: int = 0
    jobs_done: int = 0
    tokens_generated: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    manager: str = ""
    """The manager that started this worker (its registry name), or "" when run by hand."""
    keep_alive: int = -1
    """Seconds this worker may sit idle before it stops itself; -1: never."""
    rss_bytes: int = 0
    tokens_per_s: float = 0.0
    jobs_per_min: float = 0.0
    """Rates over the last RATE_WINDOW seconds of heartbeats."""
    last_job_at: float = 0.0
    """When the last job ended (0: none yet)."""
    step_s: float = 0.0
    """How long the engine's current step (or admission) has been running; 0 between steps.
    A large value with jobs waiting is a worker stuck in one long computation."""
    memory: dict = {}
    """The engine's KV memory (text workers): budget, bytes reserved, bytes per token, KV bits,
    jobs waiting for memory (worker_text/memory.py); on a CPU also the BLAS MLX runs on and whether
    the weights were dequantized to float32 (mlx_common/cpu_blas.py); empty for other kinds."""

    @property
    def serving(self) -> bool:
        return self.state in SERVING_STATES

    def summary(self, now: float, *extra: str) -> dict:
        """The entry as /health and /admin/health list it: who and where, its state, how fresh,
        and the `extra` fields asked for."""
        return {
            "name": self.name, "model": self.model, "kind": self.kind, "state": self.state,
            "error": self.error or None, "host": self.host, "pid": self.pid,
            **{name: getattr(self, name) for name in extra},
            "last_heartbeat_s": round(now - self.heartbeat_at, 2),
        }  # fmt: skip


def publish(conn: redis.Redis, keys: Keys, info: WorkerInfo, ttl: int) -> None:
    """Write the whole entry and push its expiry `ttl` seconds out (one round trip)."""
    info.heartbeat_at = time.time()
    fields = {k: str(v) for k, v in info.model_dump(mode="json", exclude={"memory"}).items()}
    fields["memory"] = json.dumps(info.memory)
    _publish(conn, keys.worker(info.name), keys.workers, info.name, fields, info.heartbeat_at, ttl)


def remove(conn: redis.Redis, keys: Keys, name: str) -> None:
    _remove(conn, keys.worker(name), keys.workers, name)


def is_alive(conn: redis.Redis, keys: Keys, name: str) -> bool:
    return bool(conn.exists(keys.worker(name)))


def live_workers(conn: redis.Redis, keys: Keys) -> list[WorkerInfo]:
    """Entries whose heartbeat has not lapsed; prunes names of expired ones from the index."""
    return [_worker(fields) for fields in _live(conn, keys.workers, keys.worker)]


def _worker(fields: dict) -> WorkerInfo:
    memory = fields.pop("memory", None)
    return WorkerInfo.model_validate({**fields, "memory": json.loads(memory) if memory else {}})


def serving_models(workers: list[WorkerInfo]) -> dict[str, list[WorkerInfo]]:
    """Model id -> workers that can take its jobs now."""
    models: dict[str, list[WorkerInfo]] = {}
    for info in workers:
        if info.serving:
            models.setdefault(info.model, []).append(info)
    return models


# --- managers ---


class ManagedState(StrEnum):
    """A worker as its manager sees it (ManagerInfo.workers)."""

    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


class ManagedWorker(BaseModel):
    model: str
    pid: int
    state: ManagedState
    restarts: int = 0
    keep_alive: int = -1
    gpu: int | None = None
    """The GPU its manager pinned it to (nvidia-smi's index, CUDA_VISIBLE_DEVICES); None: not
    pinned. Here rather than in the worker's own entry: the manager chose it."""


class ManagerInfo(BaseModel):
    """One manager (managers/manager.py): its machine's memory and the workers it runs."""

    name: str
    kind: Kind
    host: str
    pid: int
    mem_total_bytes: int = 0
    mem_available_bytes: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    workers: list[ManagedWorker] = []
    gpus: list[int] = []
    """The GPUs it pins its workers to (managers/gpus.py); empty: none, workers see all."""

    def replicas(self, model: str) -> int:
        return sum(1 for w in self.workers if w.model == model and w.state != ManagedState.STOPPED)


def publish_manager(conn: redis.Redis, keys: Keys, info: ManagerInfo, ttl: int) -> None:
    """Write the whole entry and push its expiry `ttl` seconds out (one round trip)."""
    info.heartbeat_at = time.time()
    fields = {k: str(v) for k, v in info.model_dump(mode="json", exclude={"workers", "gpus"}).items()}
    fields["workers"] = json.dumps([w.model_dump(mode="json") for w in info.workers])
    fields["gpus"] = json.dumps(info.gpus)
    _publish(conn, keys.manager(info.name), keys.managers, info.name, fields, info.heartbeat_at, ttl)


def remove_manager(conn: redis.Redis, keys: Keys, name: str) -> None:
    _remove(conn, keys.manager(name), keys.managers, name)


def live_managers(conn: redis.Redis, keys: Keys, kind: Kind | None = None) -> list[ManagerInfo]:
    """Entries whose heartbeat has not lapsed (of one kind if given); prunes dead names."""
    managers = [
        ManagerInfo.model_validate(
            {**fields, "workers": json.loads(fields.get("workers", "[]")), "gpus": json.loads(fields.get("gpus", "[]"))}
        )
        for fields in _live(conn, keys.managers, keys.manager)
    ]
    return [m for m in managers if kind is None or m.kind == kind]


# --- one hash per entry with a TTL, plus a sorted-set index of names (workers, managers) ---


def _publish(conn: redis.Redis, key: str, index: str, name: str, fields: dict, at: float, ttl: int) -> None:
    pipe = conn.pipeline(transaction=False)
    pipe.hset(key, mapping=fields)
    pipe.expire(key, ttl)
    pipe.zadd(index, {name: at})
    pipe.execute()


def _remove(conn: redis.Redis, key: str, index: str, name: str) -> None:
    pipe = conn.pipeline(transaction=False)
    pipe.delete(key)
    pipe.zrem(index, name)
    pipe.execute()


def _live(conn: redis.Redis, index: str, key_of) -> list[dict[str, str]]:
    """The fields of every indexed entry whose hash still exists; prunes names of expired ones."""
    names = [n.decode() for n in cast(list[bytes], conn.zrange(index, 0, -1))]
    if not names:
        return []
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(key_of(name))
    entries, dead = [], []
    for name, raw in zip(names, pipe.execute(), strict=True):
        if raw:
            entries.append({k.decode(): v.decode() for k, v in raw.items()})
        else:
            dead.append(name)
    if dead:
        conn.zrem(index, *dead)
    return entries
