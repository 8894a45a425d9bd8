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


def start(ctx: Context, model: str, want: Kind | frozenset[Kind] | None = None) -> Kind | None:
    """The kind of the model whose load is now under way, or None when it cannot be loaded
    on demand (AUTOLOAD off, or `local` and not a local model; an invalid reference; no
    manager of its kind; not of the kind `want`). Raises a 503 when MAX_AUTOLOADED other
    models are loading already."""
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
    wanted = {want} if isinstance(want, Kind) else want
    if (wanted is not None and kind not in wanted) or not live_managers(conn, keys, kind):
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
    prefix = ctx.keys.autoload("")
    models = [m.decode().removeprefix(prefix) for m in ctx.conn.scan_iter(match=ctx.keys.autoload("*"), count=100)]
    return sum(1 for model in models if _load_state(ctx.conn, ctx.keys, model)[0] in ("pending", "running"))


def state(conn: redis.Redis, keys: Keys, model: str) -> tuple[bool, str]:
    """(a load of `model` is under way, why it failed if it did)."""
    current, message = _load_state(conn, keys, model)
    return current not in ("none", "failed"), message


def _load_state(conn: redis.Redis, keys: Keys, model: str) -> tuple[str, str]:
    """The load on demand of `model`: none, pending (no command yet), running, done or failed,
    with the failure's message."""
    raw = cast(bytes | None, conn.get(keys.autoload(model)))
    if raw is None:
        return "none", ""
    if raw.decode() == PENDING:
        return "pending", ""
    status = commands.command_status(conn, keys, raw.decode())
    if status is not None and status.state == commands.CommandState.FAILED:
        return "failed", status.message
    if status is not None and status.state == commands.CommandState.DONE:
        return "done", ""
    return "running", ""
