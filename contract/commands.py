"""Commands from the admin API to managers and workers, and what they leave in Redis.

A load goes through a Redis Stream per kind (`commands:<kind>`, consumer group `managers`),
so exactly one manager takes each replica, and a manager that passes one on (it does not fit
there, or another machine is a better place) re-adds it with its name in `declined_by`. Each
command has a status hash the API polls. An unload is not a command to managers: every
worker of the model reads `unload:<model>` in its heartbeat and stops itself, whichever
machine it runs on.
"""

from __future__ import annotations

import json
import time
import uuid
from enum import StrEnum
from typing import cast

import redis
from pydantic import BaseModel, Field

from contract.keys import Keys, Kind

GROUP = "managers"
"""The consumer group every manager of a kind reads the command stream through."""
COMMAND_TTL = 3600
"""Seconds a command's status (and an unload request) is kept."""
STREAM_MAXLEN = 10_000


class Op(StrEnum):
    LOAD = "load"
    UNLOAD = "unload"


class CommandState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    DONE = "done"
    FAILED = "failed"


class CommandStatus(BaseModel):
    id: str
    op: Op
    kind: Kind
    model: str
    state: CommandState
    manager: str = ""
    worker_pid: int = 0
    message: str = ""
    created_at: float
    updated_at: float


class LoadCommand(BaseModel):
    """One stream entry: one replica of a model to start somewhere."""

    id: str
    kind: Kind
    model: str
    keep_alive: int | None = None
    capacity: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    """Settings for this worker alone, over its manager's environment (KV_BITS, KV_GROUP_SIZE)."""
    declined_by: list[str] = Field(default_factory=list)
    """Managers that passed this command on, in order."""
    unfit: list[str] = Field(default_factory=list)
    """Those of `declined_by` on which the model does not fit at all."""


class UnloadRequest(BaseModel):
    before: float
    cancel: bool = False


def ensure_group(conn: redis.Redis, keys: Keys, kind: Kind) -> None:
    """Create the stream and its consumer group if missing (from the start, so commands
    added before any manager ran are read too)."""
    try:
        conn.xgroup_create(keys.commands(kind), GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def add_command(conn: redis.Redis, keys: Keys, command: LoadCommand) -> None:
    conn.xadd(
        keys.commands(command.kind), {"command": command.model_dump_json()}, maxlen=STREAM_MAXLEN, approximate=True
    )


def send_load(
    conn: redis.Redis,
    keys: Keys,
    kind: Kind,
    model: str,
    *,
    replicas: int = 1,
    keep_alive: int | None = None,
    capacity: int | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """XADD one load command per replica to keys.commands(kind) (consumer group "managers",
    created with MKSTREAM if missing) and create a CommandStatus hash (keys.command(id),
    TTL 1 h) for each; returns the command ids."""
    ensure_group(conn, keys, kind)
    ids = []
    for _ in range(replicas):
        command = LoadCommand(
            id=uuid.uuid4().hex, kind=kind, model=model, keep_alive=keep_alive, capacity=capacity, env=env or {}
        )
        now = time.time()
        status = CommandStatus(
            id=command.id,
            op=Op.LOAD,
            kind=kind,
            model=model,
            state=CommandState.PENDING,
            created_at=now,
            updated_at=now,
        )
        _write_status(conn, keys, command.id, status.model_dump(mode="json"))
        add_command(conn, keys, command)  # after its status: a manager may update it at once
        ids.append(command.id)
    return ids


def command_status(conn: redis.Redis, keys: Keys, command_id: str) -> CommandStatus | None:
    raw = cast(dict[bytes, bytes], conn.hgetall(keys.command(command_id)))
    if not raw:
        return None
    return CommandStatus.model_validate({k.decode(): v.decode() for k, v in raw.items()})


def update_status(conn: redis.Redis, keys: Keys, command_id: str, state: CommandState, **fields) -> None:
    """What managers write as a command progresses (`manager`, `worker_pid`, `message`)."""
    _write_status(conn, keys, command_id, {"state": state, "updated_at": time.time(), **fields})


def _write_status(conn: redis.Redis, keys: Keys, command_id: str, fields: dict) -> None:
    pipe = conn.pipeline(transaction=False)
    pipe.hset(keys.command(command_id), mapping={k: str(v) for k, v in fields.items()})
    pipe.expire(keys.command(command_id), COMMAND_TTL)
    pipe.execute()


def request_unload(conn: redis.Redis, keys: Keys, model: str, *, cancel: bool) -> float:
    """Workers of `model` that started before now must stop: with cancel=False they finish
    what they hold (warm shutdown) then exit; with cancel=True they cancel their running
    jobs (each client gets the normal `cancelled` stream ending and rq status canceled) and
    exit. Stored at keys.unload(model) as JSON {"before": <time>, "cancel": bool}, TTL 1 h.
    Returns the cutoff time. Workers read it in their heartbeat."""
    before = time.time()
    conn.set(keys.unload(model), json.dumps({"before": before, "cancel": cancel}), ex=COMMAND_TTL)
    return before


def read_unload(conn: redis.Redis, keys: Keys, model: str) -> UnloadRequest | None:
    raw = conn.get(keys.unload(model))
    return UnloadRequest.model_validate_json(raw) if raw else None
