"""The admin API (`/admin/*`, behind `api.auth.require_admin`): health, status, load, unload.

The API never starts or stops processes itself: `load` sends commands that managers (one per
machine and venv, managers/manager.py) take from a Redis stream, and `unload` sets a flag the
model's workers read in their heartbeat. Both then watch the worker registry and answer when
the model is live (or gone), or with 202 and a link to follow once `wait` seconds pass.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request, url_for
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from contract import commands, registry
from contract.keys import Kind, parse_queue_name
from contract.modelref import InvalidModelRef, ModelRef, guess_kind, parse_model_ref
from contract.prefixes import DIRECT
from contract.reasons import safe_text
from contract.registry import live_managers
from contract.results import read_result

from .auth import require_admin
from .errors import APIError

bp = Blueprint("admin", __name__, url_prefix="/admin")
bp.before_request(require_admin)

MAX_WAIT = 300.0
RECENT_ERRORS = 10
MEMORY_SAMPLE = 20


def _ext():
    return current_app.extensions["mis"]


@bp.get("/health")
def health():
    ext = _ext()
    ext.conn.ping()
    now = time.time()
    workers = [w.summary(now, "rss_bytes") for w in registry.live_workers(ext.conn, ext.keys)]
    managers = [m.model_dump(mode="json") for m in live_managers(ext.conn, ext.keys)]
    status = "ok" if any(w["state"] in registry.SERVING_STATES for w in workers) else "degraded"
    return jsonify(status=status, redis=True, workers=workers, managers=managers)


@bp.get("/status")
def status():
    ext = _ext()
    workers = registry.live_workers(ext.conn, ext.keys)
    queues = _queues(ext.conn)
    # A worker's GPU is in its manager's entry (the manager pinned it), not in the worker's own.
    gpus = {(m.name, w.pid): w.gpu for m in live_managers(ext.conn, ext.keys) for w in m.workers}
    return jsonify(
        workers=[
            {
                "name": w.name,
                "model": w.model,
                "kind": w.kind,
                "state": w.state,
                "host": w.host,
                "pid": w.pid,
                "manager": w.manager or None,
                "gpu": gpus.get((w.manager, w.pid)),
                "capacity": w.capacity,
                "active_jobs": w.active_jobs,
                "jobs_done": w.jobs_done,
                "tokens_generated": w.tokens_generated,
                "tokens_per_s": round(w.tokens_per_s, 2),
                "jobs_per_min": round(w.jobs_per_min, 2),
                "step_s": w.step_s,
                "memory": w.memory or None,
                "error": w.error or None,
            }
            for w in workers
        ],
        queues=[q for q, _ in queues],
        totals={
            "tokens_per_s": round(sum(w.tokens_per_s for w in workers), 2),
            "jobs_per_min": round(sum(w.jobs_per_min for w in workers), 2),
            "queued": sum(q["queued"] for q, _ in queues),
            "running": sum(w.active_jobs for w in workers),
        },
        # Workers' own queues (routed conversations, contract/prefixes.py) hold answers and errors too.
        recent_errors=_recent_errors(ext.conn, ext.keys, [queue for _, queue in queues] + _direct(ext.conn)),
        redis=_redis_memory(ext.conn, ext.keys, [queue for _, queue in queues] + _direct(ext.conn)),
    )


def _redis_memory(conn, keys, queues: list[Queue]) -> dict:
    """Redis's memory and what finished answers cost there: the answers kept (stored
    completions, document pages, batch lines: rq's finished registries) and the bytes one
    takes (rq record, result, token stream), averaged over the newest few. Unstored chat
    answers are not counted: nothing of them is kept once their client has them."""
    kept, sample = 0, []
    for queue in queues:
        finished = FinishedJobRegistry(queue=queue)
        kept += len(finished)
        sample += finished.get_job_ids(-MEMORY_SAMPLE, -1)
    sizes = [
        sum(conn.memory_usage(key) or 0 for key in (f"rq:job:{job_id}", f"rq:results:{job_id}", keys.stream(job_id)))
        for job_id in sample[-MEMORY_SAMPLE:]
    ]
    return {
        "used_mb": round(conn.info("memory")["used_memory"] / 2**20, 2),
        "answers_kept": kept,
        "bytes_per_answer": round(sum(sizes) / len(sizes)) if sizes else None,
    }


def _queues(conn) -> list[tuple[dict, Queue]]:
    """Our queues (`<kind>:<model>:<priority>`) with their depth and running jobs."""
    found = []
    for queue in Queue.all(connection=conn):
        parsed = parse_queue_name(queue.name)
        if parsed is None:
            continue
        kind, model, priority = parsed
        found.append(
            (
                {
                    "name": queue.name,
                    "model": model,
                    "kind": kind,
                    "priority": priority,
                    "queued": queue.count,
                    "running": len(queue.started_job_registry),
                },
                queue,
            )
        )
    return sorted(found, key=lambda pair: pair[0]["name"])


def _direct(conn) -> list[Queue]:
    return [q for q in Queue.all(connection=conn) if q.name.startswith(DIRECT)]


def _recent_errors(conn, keys, queues: list[Queue]) -> list[dict]:
    """Failed jobs with the reason their client was given (the job's own error event, or the
    outcome rule's), never rq's traceback: that names our modules and libraries' raw messages."""
    errors = []
    for queue in queues:
        failed = FailedJobRegistry(queue=queue)
        for job in queue.job_class.fetch_many(failed.get_job_ids(-RECENT_ERRORS, -1), connection=conn):
            if job is None:
                continue
            outcome = read_result(conn, keys, job.id).error or {}
            reason = f"{outcome.get('code', 'generation_failed')}: {outcome.get('message', '')}".rstrip(": ")
            errors.append(
                {
                    "job_id": job.id,
                    "queue": queue.name,
                    "ended_at": job.ended_at.isoformat() if job.ended_at else None,
                    "error": safe_text(reason),
                }
            )
    errors.sort(key=lambda e: e["ended_at"] or "", reverse=True)
    return errors[:RECENT_ERRORS]


@bp.post("/load")
def load():
    ext = _ext()
    ref, model = _model_arg()
    kind = _kind_arg(ref)
    replicas = _int_arg("replicas", 1, 1, 16) or 1
    keep_alive = _int_arg("keep_alive", None, -1, 7 * 86400)
    env = _kv_args(kind)
    wait = _wait_arg()
    if not live_managers(ext.conn, ext.keys, kind):
        raise APIError(
            503,
            f"no {kind} manager is running to load {model!r}; start one with "
            f"`python -m worker_{kind}.manager` on a machine that shares this Redis",
            code="no_manager",
        )
    # `replicas` is a target, not an increment: a repeated load starts nothing more.
    present = [w for w in registry.live_workers(ext.conn, ext.keys) if w.model == model
               and w.state not in (registry.WorkerState.ERROR, registry.WorkerState.STOPPING)]  # fmt: skip
    missing = max(0, replicas - len(present))
    ids = (
        commands.send_load(ext.conn, ext.keys, kind, model, replicas=missing, keep_alive=keep_alive, env=env)
        if missing
        else []
    )
    deadline = time.monotonic() + wait
    while True:
        statuses = [commands.command_status(ext.conn, ext.keys, i) for i in ids]
        failed = [s for s in statuses if s is not None and s.state == commands.CommandState.FAILED]
        if failed:
            raise APIError(503, f"loading {model!r} failed: {failed[0].message}", code="load_failed")
        serving = [w for w in registry.live_workers(ext.conn, ext.keys) if w.model == model and w.serving]
        if len(serving) >= replicas and all(s is not None and s.state == commands.CommandState.DONE for s in statuses):
            return jsonify(
                model=model,
                kind=kind,
                status="loaded",
                workers=[{"name": w.name, "host": w.host, "pid": w.pid} for w in serving],
            )
        if time.monotonic() >= deadline:
            return jsonify(
                model=model,
                kind=kind,
                status="loading",
                commands=[{"id": i, "url": url_for("admin.command", command_id=i)} for i in ids],
            ), 202
        time.sleep(0.2)


@bp.get("/commands/<command_id>")
def command(command_id: str):
    found = commands.command_status(_ext().conn, _ext().keys, command_id)
    if found is None:
        raise APIError(404, f"no command {command_id!r} (commands are kept for an hour)", code="not_found")
    return jsonify(found.model_dump(mode="json"))


@bp.post("/unload")
def unload():
    ext = _ext()
    _, model = _model_arg()
    cancel = request.args.get("cancel", "false").lower() in ("1", "true", "yes")
    wait = _wait_arg()
    if not [w for w in registry.live_workers(ext.conn, ext.keys) if w.model == model]:
        raise APIError(404, f"no worker serves {model!r}", param="model_path", code="model_not_found")
    commands.request_unload(ext.conn, ext.keys, model, cancel=cancel)
    deadline = time.monotonic() + wait
    while True:
        left = [w for w in registry.live_workers(ext.conn, ext.keys) if w.model == model]
        if not left:
            return jsonify(model=model, status="unloaded", cancelled_running_jobs=cancel)
        if time.monotonic() >= deadline:
            return jsonify(model=model, status="unloading", workers_left=len(left), cancelled_running_jobs=cancel), 202
        time.sleep(0.2)


def _model_arg() -> tuple[ModelRef, str]:
    raw = request.args.get("model_path", "")
    if not raw:
        raise APIError(
            400,
            "model_path is required: a directory name under MODELS_DIR or a Hugging Face repo id (org/name)",
            param="model_path",
            code="missing_required_parameter",
        )
    try:
        ref = parse_model_ref(raw, _ext().settings.model_roots)
    except InvalidModelRef as exc:
        raise APIError(400, str(exc), param="model_path", code="invalid_model_path") from None
    return ref, ref.name  # the canonical name: every spelling of a model is one model


def _kind_arg(ref: ModelRef) -> Kind:
    given = request.args.get("kind")
    if given:
        if given not in set(Kind):
            raise APIError(400, f"kind must be one of {', '.join(Kind)}", param="kind", code="invalid_value")
        return Kind(given)
    return guess_kind(ref)


def _kv_args(kind: Kind) -> dict[str, str]:
    """`kv_bits` (none, 8, 4) and `kv_group_size` (32, 64, 128) for the workers of this load:
    the KV cache's precision (text models; docs/MEMORY.md)."""
    env = {}
    bits, group = request.args.get("kv_bits"), request.args.get("kv_group_size")
    if bits is not None:
        if bits not in ("none", "8", "4"):
            raise APIError(400, "kv_bits must be none, 8 or 4", param="kv_bits", code="invalid_value")
        env["KV_BITS"] = bits
    if group is not None:
        if group not in ("32", "64", "128"):
            raise APIError(400, "kv_group_size must be 32, 64 or 128", param="kv_group_size", code="invalid_value")
        env["KV_GROUP_SIZE"] = group
    if env and kind != Kind.TEXT:
        raise APIError(400, "kv_bits and kv_group_size apply to text models only", param="kv_bits",
                       code="invalid_value")  # fmt: skip
    return env


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"{name} must be an integer", param=name, code="invalid_value") from None
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}", param=name, code="invalid_value")
    return value


def _wait_arg() -> float:
    raw = request.args.get("wait", "60")
    try:
        wait = float(raw)
    except ValueError:
        raise APIError(400, "wait must be a number of seconds", param="wait", code="invalid_value") from None
    return max(0.0, min(wait, MAX_WAIT))
