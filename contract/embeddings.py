"""OpenAI's embeddings answer, built from an embedding job's `done` data: by the API for a
request, and by a batch's finalize job for its lines (work/batches.py)."""

from __future__ import annotations

import base64
import struct


def embedding_list(model: str, done: dict, encoding_format: str = "float") -> dict:
    """OpenAI's list of embeddings from the worker's `done` data."""
    count, dims = done["count"], done["dimensions"]
    raw = base64.b64decode(done["embeddings"])
    size = 4 * dims
    rows = [raw[i * size : (i + 1) * size] for i in range(count)]
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row).decode()
            if encoding_format == "base64"
            else list(struct.unpack(f"<{dims}f", row)),
        }
        for i, row in enumerate(rows)
    ]
    usage = done.get("usage") or {}
    tokens = usage.get("prompt_tokens", 0)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
