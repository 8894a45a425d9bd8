"""`POST /v1/embeddings` (OpenAI's shape): an embedding job on the model's queue, read to its
end, answered as floats or base64.

The worker (worker_embedding/) tokenizes, checks each input against the model's limit, and
packs the inputs with other requests' into batches of like length; its `done` event carries
the vectors as base64 float32 in input order, which is already OpenAI's base64 encoding of
each vector, so `encoding_format: base64` only cuts the bytes per input.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from contract.embeddings import embedding_body
from contract.queues import new_job_id
from contract.stream import Event, EventType

from . import request_id
from .bodies import json_body
from .delivery import enqueue_job, read_all, then
from .embeddings_request import EmbeddingRequest, embed_payload, embed_spec
from .relay import JobRelay

bp = Blueprint("embeddings", __name__, url_prefix="/v1")


@bp.post("/embeddings")
def embeddings():
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"embd-{job_id}")
    req = EmbeddingRequest.model_validate(json_body(), context={"settings": ctx.settings})
    payload = embed_payload(ctx, req)
    job = enqueue_job(ctx, embed_spec(ctx, payload, job_id=job_id))
    relay = JobRelay(ctx, job.id, payload.model, forget_when_sent=True)
    done: dict = {}

    def add(event: Event) -> None:
        if event.type == EventType.DONE:
            done.update(event.data)

    if not read_all(relay, add, client_socket=request.environ.get("gunicorn.socket")):
        return Response(status=499)  # nobody reads it; its job was cancelled
    body = embedding_body(payload.model, done, req.encoding_format)
    return Response(then(body, relay.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})
