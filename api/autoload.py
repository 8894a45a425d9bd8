"""Load on demand: a chat request for a valid model that nobody serves asks a manager to load
it (`AUTOLOAD`: `local` models by default), and the request waits in the model's queue meanwhile, as
with Ollama. One load per model at a time: a marker (`autoload:<model>`, holding the load
command's id) is claimed with SET NX, and the relay reads it to tell a job that waits for a
load from one that waits for nothing (api/relay.py: model_unavailable).
"""

from __future__ import annotations

from typing import cast

import redis

from contract import commands
from contract.context import Context
from contract.keys import Keys, Kind
from contract.modelref import InvalidModelRef, guess_kind, parse_model_ref
from contract.registry import live_managers

from .errors import APIError

PENDING = "pending"


def start(ctx: Context, model: str) -> Kind | None:
    """The kind of the model whose load is now under way, or None when it cannot be loaded
    on demand (AUTOLOAD off, or `local` and not a local model; an invalid reference; no
    manager of its kind). Raises a 503 when MAX_AUTOLOADED other models are loading already."""
    conn, keys, settings = ctx.conn, ctx.keys, ctx.settings
    policy = settings.autoload_policy
    if policy == "off":
        return None
    try:
        ref = parse_model_ref(model, settings.model_roots)
    except InvalidModelRef:
        return None
    if policy == "local" and ref.local_path is None:
        return None
    kind = guess_kind(ref)
    if not live_managers(conn, keys, kind):
        return None
    marker = keys.autoload(ref.name)
    if not conn.exists(marker) and loading_count(ctx) >= settings.max_autoloaded:
        raise APIError(503, f"{settings.max_autoloaded} models are loading on demand already (MAX_AUTOLOADED); "
                       "retry shortly, or have an admin load this one", code="too_many_loads",
                       headers={"Retry-After": "10"})  # fmt: skip
    # The marker lives as long as a job may wait in the queue for the load to finish.
    if conn.set(marker, PENDING, nx=True, ex=settings.queued_ttl):
        (command_id,) = commands.send_load(conn, keys, kind, ref.name)
        conn.set(marker, command_id, ex=settings.queued_ttl)
    return kind


def loading_count(ctx: Context) -> int:
    """Loads on demand still under way (their markers outlive them: a finished one is skipped)."""
    count = 0
    for marker in ctx.conn.scan_iter(match=ctx.keys.autoload("*"), count=100):
        model = marker.decode().removeprefix(ctx.keys.autoload(""))
        loading, _ = state(ctx.conn, ctx.keys, model)
        if loading and not _done(ctx, model):
            count += 1
    return count


def _done(ctx: Context, model: str) -> bool:
    raw = cast(bytes | None, ctx.conn.get(ctx.keys.autoload(model)))
    if raw is None or raw.decode() == PENDING:
        return False
    status = commands.command_status(ctx.conn, ctx.keys, raw.decode())
    return status is not None and status.state == commands.CommandState.DONE


def state(conn: redis.Redis, keys: Keys, model: str) -> tuple[bool, str]:
    """(a load of `model` is under way, why it failed if it did)."""
    raw = cast(bytes | None, conn.get(keys.autoload(model)))
    if raw is None:
        return False, ""
    command_id = raw.decode()
    if command_id == PENDING:
        return True, ""
    status = commands.command_status(conn, keys, command_id)
    if status is not None and status.state == commands.CommandState.FAILED:
        return False, status.message
    return True, ""
