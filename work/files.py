"""Files of the Batch API (`/v1/files`): bytes and OpenAI's file object in one Redis hash,
kept RESULTS_TTL. Input files are what clients upload; batches write their output and error
files here too (purpose `batch_output`)."""

from __future__ import annotations

import json
import time
import uuid
from typing import cast

import redis

from contract.keys import Keys


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def put(conn: redis.Redis, keys: Keys, data: bytes, *, filename: str, purpose: str, ttl: int) -> dict:
    """Store a file; returns its OpenAI file object."""
    now = int(time.time())
    file_id = new_file_id()
    info = {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": now,
        "expires_at": now + ttl,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    key = keys.file(file_id)
    with conn.pipeline() as pipe:
        pipe.hset(key, mapping={"info": json.dumps(info), "content": data})
        pipe.expire(key, ttl)
        pipe.execute()
    return info


def info(conn: redis.Redis, keys: Keys, file_id: str) -> dict | None:
    raw = conn.hget(keys.file(file_id), "info")
    return json.loads(raw) if raw else None


def content(conn: redis.Redis, keys: Keys, file_id: str) -> bytes | None:
    return cast(bytes | None, conn.hget(keys.file(file_id), "content"))
