"""Cooperative cancellation. rq's stop-job command does nothing to in-process workers, so a
client that leaves sets a flag and the worker checks it once per engine step."""
from __future__ import annotations

import redis

from contract.keys import Keys


def request_cancel(conn: redis.Redis, keys: Keys, job_id: str, ttl: int, pipeline=None) -> None:
    (pipeline if pipeline is not None else conn).set(keys.cancel(job_id), 1, ex=ttl)
