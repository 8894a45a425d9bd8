"""`GET /health`: is Redis reachable, and which workers are alive in which state."""

from __future__ import annotations

import time

import redis
from flask import Blueprint, current_app, jsonify

from contract import registry

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    ext = current_app.extensions["mis"]
    try:
        ext.conn.ping()
        workers = registry.live_workers(ext.conn, ext.keys)
    except redis.exceptions.RedisError:
        return jsonify(status="unavailable", redis=False, workers=[]), 503
    now = time.time()
    listed = [w.summary(now, "jobs_done", "tokens_generated") for w in workers]
    serving = any(w.serving for w in workers)
    return jsonify(status="ok" if serving else "degraded", redis=True, workers=listed)
