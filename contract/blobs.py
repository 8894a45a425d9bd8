"""The blob store: validated bytes (images, later document pages) in Redis under their
sha256, so job payloads carry keys, never the bytes (rq-dashboard shows payloads; Redis
holds one copy of an image however many jobs name it)."""

from __future__ import annotations

import hashlib
from typing import cast

import redis

from contract.keys import Keys


class BlobMissing(LookupError):
    """A payload names a blob that has expired or never existed."""

    code = "blob_expired"


def put(conn: redis.Redis, keys: Keys, data: bytes, ttl: int) -> str:
    """Store `data` for `ttl` seconds (or refresh its TTL); returns its sha256 hex digest."""
    digest = hashlib.sha256(data).hexdigest()
    conn.set(keys.blob(digest), data, ex=ttl)
    return digest


def get(conn: redis.Redis, keys: Keys, digest: str) -> bytes:
    data = cast(bytes | None, conn.get(keys.blob(digest)))
    if data is None:
        raise BlobMissing("an image of this request expired before a worker took the job; please resend")
    return data
