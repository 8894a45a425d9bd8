"""`/v1/batches` of the OpenAI Batch API: `POST` (from an uploaded JSONL file of
`/v1/chat/completions` or `/v1/embeddings` requests), `GET /<id>`, `POST /<id>/cancel`.

The input file is validated here, line by line, with the same request model as the endpoint
(api/schemas.py, api/embeddings_request.py) and the same image intake (api/images.py): a file
with a malformed line makes a batch that is `failed` with the lines' `errors`, as OpenAI's
validation does. A line for a model nobody serves (and none can load) runs no job and goes to
the error file. Every other line is one chat (or embedding) job on its model's batch queue;
the work is work/batches.py.
"""

from __future__ import annotations

import time
import uuid

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.keys import Kind
from contract.queues import enqueue
from work import batches, files
from work.batches import BatchStatus

from .bodies import json_body
from .embeddings_request import EmbeddingRequest, embed_payload, embed_spec
from .errors import APIError, file_not_found, from_validation_error
from .intake import chat_payload
from .schemas import ChatCompletionRequest

bp = Blueprint("batches", __name__, url_prefix="/v1")
ENDPOINT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (ENDPOINT, EMBEDDINGS)
ID_PREFIX = "batch_"
MAX_LINE_ERRORS = 100
"""Errors listed for a file that fails validation (the count says how many lines failed)."""


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=100)
    endpoint: str = Field(description=f"{ENDPOINT} or {EMBEDDINGS}")
    completion_window: str = Field("24h", description="only 24h")
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, str] | None):
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys of at most 64 characters, values of at most 512")
        return value


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: str
    url: str
    body: dict


@bp.post("/batches")
def create_batch():
    ext = current_app.extensions["mis"]
    req = BatchRequest.model_validate(json_body())
    if req.endpoint not in ENDPOINTS:
        raise APIError(
            400, f"endpoint must be {' or '.join(ENDPOINTS)} (those batches run here)", param="endpoint",
            code="invalid_value",
        )  # fmt: skip
    if req.completion_window != "24h":
        raise APIError(400, "completion_window must be 24h", param="completion_window", code="invalid_value")
    content = files.content(ext.conn, ext.keys, req.input_file_id)
    if content is None:
        raise file_not_found(req.input_file_id)
    batch_id = ID_PREFIX + uuid.uuid4().hex
    now = int(time.time())
    meta = {
        "endpoint": req.endpoint,
        "input_file_id": req.input_file_id,
        "completion_window": "24h",
        "created_at": now,
        "expires_at": now + ext.settings.batch_queued_ttl,
        "metadata": req.metadata,
    }
    parsed, errors = _parse(content, ext.settings, req.endpoint)
    if errors:
        batches.create(
            ext,
            batch_id,
            BatchStatus.FAILED,
            meta=meta,
            lines=[],
            errors={"object": "list", "data": errors[:MAX_LINE_ERRORS]},
        )
        return jsonify(_view(batch_id))
    lines: list[dict] = []
    queued: list[tuple[Kind, str, str]] = []
    for custom_id, line_req in parsed:
        try:
            if isinstance(line_req, EmbeddingRequest):
                embed = embed_payload(ext, line_req, batch=True)
                job_id = enqueue(ext, embed_spec(ext, embed, retries=batches.LINE_RETRIES)).id
                lines.append({"custom_id": custom_id, "job_id": job_id, "model": embed.model,
                              "encoding_format": line_req.encoding_format})  # fmt: skip
                queued.append((Kind.EMBEDDING, embed.model, job_id))
                continue
            kind, payload = chat_payload(
                ext, line_req, image_ttl=ext.settings.batch_queued_ttl + ext.settings.job_timeout
            )
        except APIError as exc:
            lines.append(
                {
                    "custom_id": custom_id,
                    "job_id": None,
                    "error": {
                        "status": exc.status,
                        "code": exc.code,
                        "message": exc.message,
                        "param": exc.param,
                        "type": exc.type,
                    },
                }
            )
            continue
        job_id = batches.enqueue_line(ext, payload, kind)
        lines.append({"custom_id": custom_id, "job_id": job_id, "model": payload.model})
        queued.append((kind, payload.model, job_id))
    batches.create(ext, batch_id, BatchStatus.IN_PROGRESS, meta=meta, lines=lines)
    if queued:
        kind, model, _ = queued[0]
        batches.enqueue_finalize(ext, batch_id, kind, model, [j for _, _, j in queued])
    elif batches.set_status(ext, batch_id, BatchStatus.FINALIZING):
        batches.finish(ext, batch_id, BatchStatus.COMPLETED)
    return jsonify(_view(batch_id))


@bp.get("/batches")
def list_batches():
    """OpenAI's list of batches, newest first: `limit` (1–100, default 20) and `after` (an id)."""
    ext = current_app.extensions["mis"]
    raw = request.args.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise APIError(400, "limit must be a whole number from 1 to 100", param="limit", code="invalid_value")
    ids, more = batches.listed(ext, int(raw), request.args.get("after"))
    data = [_view(i) for i in ids]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return jsonify({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more})


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(_view(batch_id))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    ext = current_app.extensions["mis"]
    _record(batch_id)
    batches.cancel(ext, batch_id)
    return jsonify(_view(batch_id))


def _parse(
    content: bytes, settings, endpoint: str
) -> tuple[list[tuple[str, ChatCompletionRequest | EmbeddingRequest]], list[dict]]:
    """The lines as (custom_id, request), or the validation errors of the file."""
    parsed: list[tuple[str, ChatCompletionRequest | EmbeddingRequest]] = []
    errors: list[dict] = []
    seen: set[str] = set()

    def error(number: int | None, code: str | None, message: str | None, param: str | None = None):
        errors.append({"code": code, "message": message, "param": param, "line": number})

    try:
        text = content.decode("utf-8-sig")  # a BOM (Windows editors) is no part of the first line
    except UnicodeDecodeError:
        error(None, "invalid_file", "the input file is not UTF-8 text")
        return [], errors
    lines = [(n, raw) for n, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if not lines:
        error(None, "empty_file", "the input file has no requests")
    if len(lines) > settings.max_batch_lines:
        error(
            None, "too_many_requests", f"a batch may hold at most {settings.max_batch_lines} requests (MAX_BATCH_LINES)"
        )
        return [], errors
    for number, raw in lines:
        try:
            line = BatchLine.model_validate_json(raw)
            if line.method != "POST" or line.url != endpoint:
                error(number, "invalid_url", f"each line must be POST {endpoint}, the batch's endpoint", "url")
                continue
            if line.custom_id in seen:
                error(
                    number, "duplicate_custom_id", f"custom_id {line.custom_id!r} appears more than once", "custom_id"
                )
                continue
            seen.add(line.custom_id)
            if endpoint == EMBEDDINGS:
                embed = EmbeddingRequest.model_validate(line.body, context={"settings": settings})
                parsed.append((line.custom_id, embed))
                continue
            chat = ChatCompletionRequest.model_validate(line.body, context={"settings": settings})
            if chat.stream:
                error(number, "invalid_value", "batch requests cannot stream", "body.stream")
                continue
            parsed.append((line.custom_id, chat))
        except ValidationError as exc:
            failure = from_validation_error(exc)
            error(number, failure.code, failure.message, failure.param)
    return parsed, errors


def _record(batch_id: str) -> dict:
    ext = current_app.extensions["mis"]
    record = batches.load(ext, batch_id) if batch_id.startswith(ID_PREFIX) else None
    if record is None:
        raise APIError(
            404, f"no batch {batch_id!r} is kept here (unknown, or expired)", param="batch_id", code="batch_not_found"
        )
    return record


def _view(batch_id: str) -> dict:
    """The record as OpenAI's Batch object."""
    ext = current_app.extensions["mis"]
    record = _record(batch_id)
    meta = record["meta"]
    times = {
        f"{s}_at": record.get(f"{s}_at")
        for s in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
    }
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": meta["endpoint"],
        "errors": record.get("errors"),
        "input_file_id": meta["input_file_id"],
        "completion_window": meta["completion_window"],
        "status": record["status"],
        "output_file_id": record.get("output_file_id"),
        "error_file_id": record.get("error_file_id"),
        "created_at": meta["created_at"],
        "expires_at": meta["expires_at"],
        **times,
        "request_counts": batches.request_counts(ext.conn, record),
        "metadata": meta["metadata"],
    }
