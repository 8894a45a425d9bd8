"""Status records of documents and batches: one Redis hash each, kept RESULTS_TTL, whose
status only `write_status` writes (one writer per lifecycle).

A status is written only while the record exists and has not ended: a cancel is never undone
by a job that was already running, and a record that expired is never re-created by a late
job (without its request it would be unreadable)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import cast

import redis

_WRITE_STATUS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  if current == ARGV[i] then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, n + 2))
return 1
"""


def create(conn: redis.Redis, key: str, status: str, ttl: int, **fields) -> None:
    """A new record: `fields` are JSON-encoded, the status is set, the TTL starts."""
    with conn.pipeline() as pipe:
        pipe.hset(
            key,
            mapping={
                "status": status,
                f"{status}_at": int(time.time()),
                **{k: json.dumps(v) for k, v in fields.items()},
            },
        )
        pipe.expire(key, ttl)
        pipe.execute()


def write_status(conn: redis.Redis, key: str, status: str, terminal: Iterable[str], **fields) -> bool:
    """Set the status (and `<status>_at`, and `fields` JSON-encoded) unless the record has
    ended or expired; False when nothing was written."""
    terminal = list(terminal)
    mapping: dict[str, str | int] = {
        "status": status,
        f"{status}_at": int(time.time()),
        **{k: json.dumps(v) for k, v in fields.items()},
    }
    args: list[str | int] = [len(terminal), *terminal, *(item for pair in mapping.items() for item in pair)]
    return bool(conn.eval(_WRITE_STATUS, 1, key, *args))


def read(conn: redis.Redis, key: str) -> dict | None:
    """The record with its JSON fields decoded (`status` and `*_at` as they are), or None."""
    raw = cast(dict[bytes, bytes], conn.hgetall(key))
    if not raw:
        return None
    out: dict = {}
    for name, value in ((k.decode(), v.decode()) for k, v in raw.items()):
        if name == "status":
            out[name] = value
        elif name.endswith("_at"):
            out[name] = int(value)
        else:
            out[name] = json.loads(value)
    return out
