"""`POST /v1/embeddings` (OpenAI's shape): an embedding job on the model's queue, read to its
end, answered as floats or base64.

The worker (worker_embedding/) tokenizes, checks each input against the model's limit, and
packs the inputs with other requests' into length-bucketed batches; its `done` event carries
the vectors as base64 float32 in input order, which is already OpenAI's base64 encoding of
each vector, so `encoding_format: base64` only cuts the bytes per input.
"""

from __future__ import annotations

import base64
import struct

from flask import Blueprint, Response, current_app, jsonify, request

from contract.context import Context
from contract.keys import Kind, Priority
from contract.payloads import EmbedJob
from contract.queues import EMBED_FUNC, JobSpec, QueueFull, enqueue, new_job_id
from contract.stream import Event, EventType

from . import request_id
from .bodies import json_body
from .delivery import read_all, then
from .embeddings_request import EmbeddingRequest
from .errors import APIError
from .intake import canonical_model, route
from .relay import JobRelay

bp = Blueprint("embeddings", __name__, url_prefix="/v1")


@bp.post("/embeddings")
def embeddings():
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"embd-{job_id}")
    req = EmbeddingRequest.model_validate(json_body(), context={"settings": ctx.settings})
    payload = embed_payload(ctx, req)
    try:
        job = enqueue(ctx, embed_spec(ctx, payload, job_id=job_id))
    except QueueFull as full:
        raise APIError(
            429, f"model {payload.model!r} has {full.depth} requests waiting; retry later", code="queue_full",
            headers={"Retry-After": "2"},
        ) from None  # fmt: skip
    relay = JobRelay(ctx, job.id, payload.model, forget_when_sent=True)
    done: dict = {}

    def add(event: Event) -> None:
        if event.type == EventType.DONE:
            done.update(event.data)

    if not read_all(relay, add, client_socket=request.environ.get("gunicorn.socket")):
        return Response(status=499)  # nobody reads it; its job was cancelled
    body = jsonify(response(payload.model, done, req.encoding_format)).get_data()
    return Response(then(body, relay.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})


def embed_payload(ctx: Context, req: EmbeddingRequest, *, batch: bool = False) -> EmbedJob:
    """The job for a checked request, routed to an embedding model (else a 400 naming the fix)."""
    model = canonical_model(ctx, req.model)
    kind, _ = route(ctx, model, want=Kind.EMBEDDING)
    if kind != Kind.EMBEDDING:
        raise APIError(
            400,
            f"model {model!r} is a {kind} model; embeddings come from an embedding model "
            "(see /v1/models for kind `embedding`), and chat from /v1/chat/completions",
            param="model",
            code="wrong_model_kind",
        )
    return EmbedJob(model=model, texts=req.texts, tokens=req.tokens, dimensions=req.dimensions, batch=batch)


def embed_spec(ctx: Context, payload: EmbedJob, **options) -> JobSpec:
    priority = Priority.BATCH if payload.batch else Priority.INTERACTIVE
    if not payload.batch:  # read once, by this request: nothing to keep
        options.setdefault("keep", ctx.settings.unstored_ttl)
        options.setdefault("record_success", False)
    return JobSpec(EMBED_FUNC, payload, Kind.EMBEDDING, payload.model, priority=priority, **options)


def response(model: str, done: dict, encoding_format: str) -> dict:
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
