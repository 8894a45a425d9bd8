"""The Responses API: `POST /v1/responses`, `GET /v1/responses/<id>` (also resuming its event
stream: `?stream=true&starting_after=N`), `DELETE`, `POST .../cancel`, `GET .../input_items`.

A response is a chat job (api/responses_request.py translates the request; api/intake.py
routes it) whose events api/responses_shape.py turns into the Responses API's. What is kept
(`store`, the default) is the request's record — options, input items and the conversation
before them — under `response:<job id>`, RESPONSES_TTL, next to the job's rq record and event
stream kept as long: retrieval, resuming and `previous_response_id` read them, so any API
process, a restarted one too, serves any response. A background response (`background:
true`) is answered at once and runs whether or not anyone listens; reading its stream never
cancels it. A plain request's job is cancelled when its client leaves, as a chat's is.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from itertools import chain

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import ValidationError

from contract.context import Context
from contract.queues import cancel_job, fetch_job, new_job_id
from contract.results import ending_without_event
from contract.stream import Event, EventType, StreamReader

from . import request_id
from .bodies import json_body
from .completions import SSE_KEEPALIVE
from .delivery import enqueue_chat, first_event, read_all, sse_response, then
from .errors import APIError, from_validation_error, redis_unavailable
from .intake import chat_payload
from .relay import JobRelay
from .responses_request import ResponsesRequest, chat_body
from .responses_shape import ResponseBuilder, sse_event
from .schemas import ChatCompletionRequest
from .telemetry import GenerationTimer

bp = Blueprint("responses", __name__, url_prefix="/v1")
_ID = re.compile(r"resp_([0-9a-f]{32})")
MAX_CHAIN = 1000
"""Items a conversation may hold through `previous_response_id`s."""
CANCEL_WAIT = 5.0
"""Seconds a cancel waits for the job's ending, so its answer says `cancelled`."""


@bp.post("/responses")
def create_response():
    started = time.perf_counter()
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    response_id = f"resp_{job_id}"
    request_id.assign(response_id)
    req = ResponsesRequest.model_validate(json_body())
    context = _conversation_before(ctx, req.previous_response_id)
    items = req.items()
    try:
        chat = ChatCompletionRequest.model_validate(
            chat_body(req, [*context, *items]), context={"settings": ctx.settings}
        )
    except ValidationError as exc:  # named as the chat request has it; the client sent `input`
        error = from_validation_error(exc)
        raise APIError(400, f"input: {error.message}", param="input", code=error.code) from None
    try:
        kind, payload = chat_payload(ctx, chat)
    except APIError as exc:  # the chat request's names for the parts the client sent
        exc.param = _renamed(exc.param)
        raise
    record = _record(req, payload.model, items, context)
    keep = ctx.settings.responses_ttl if req.store else ctx.settings.unstored_ttl
    if req.store:  # before the job exists: whoever polls it finds its record
        ctx.conn.set(ctx.keys.response(job_id), json.dumps(record), ex=keep)
    try:
        enqueue_chat(ctx, payload, kind, job_id, store=req.store, keep=keep)
    except APIError:  # a full queue: nothing of it stays
        ctx.conn.delete(ctx.keys.response(job_id))
        raise
    builder = ResponseBuilder(response_id, record)
    if req.background and not req.stream:
        return jsonify(builder.snapshot())
    relay = JobRelay(ctx, job_id, payload.model, forget_when_sent=not req.store, detached=req.background)
    timer = GenerationTimer(ctx.conn, ctx.keys, payload.model, started)  # metrics
    if req.stream:
        events = relay.events()
        first = None if req.background else first_event(relay, events, timer)
        return sse_response(_stream(relay, builder, chain([first], events) if first else events, -1, timer))
    return _collect(relay, builder, timer)


@bp.get("/responses/<response_id>")
def get_response(response_id: str):
    ctx = current_app.extensions["mis"]
    job_id, record = _stored(ctx, response_id)
    if request.args.get("stream", "false").lower() == "true":
        after = request.args.get("starting_after", "-1")
        if not re.fullmatch(r"-?[0-9]{1,9}", after):
            raise APIError(400, "starting_after must be an integer", param="starting_after", code="invalid_value")
        relay = JobRelay(ctx, job_id, record["model"], detached=True)
        return sse_response(_stream(relay, ResponseBuilder(response_id, record), relay.events(), int(after)))
    return jsonify(_built(ctx, response_id, job_id, record).snapshot())


@bp.delete("/responses/<response_id>")
def delete_response(response_id: str):
    ctx = current_app.extensions["mis"]
    job_id, _ = _stored(ctx, response_id)
    cancel_job(ctx, job_id)
    job = fetch_job(ctx.conn, job_id)
    if job is not None:
        job.delete()
    ctx.conn.delete(ctx.keys.response(job_id), ctx.keys.stream(job_id))
    return jsonify({"id": response_id, "object": "response", "deleted": True})


@bp.post("/responses/<response_id>/cancel")
def cancel_response(response_id: str):
    ctx = current_app.extensions["mis"]
    job_id, record = _stored(ctx, response_id)
    if not record.get("background"):
        raise APIError(
            400,
            "only background responses can be cancelled (a streaming one ends when its client leaves)",
            param="response_id",
            code="invalid_value",
        )
    cancel_job(ctx, job_id)
    reader, deadline = StreamReader(ctx.conn, ctx.keys, job_id), time.monotonic() + CANCEL_WAIT
    builder = ResponseBuilder(response_id, record)
    builder.opening()
    while not builder.ended and time.monotonic() < deadline:
        for event in reader.read(block_ms=250):
            builder.feed(event)
    return jsonify(builder.snapshot())


@bp.get("/responses/<response_id>/input_items")
def input_items(response_id: str):
    ctx = current_app.extensions["mis"]
    _, record = _stored(ctx, response_id)
    items = list(record["input"])
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, "order must be asc or desc", param="order", code="invalid_value")
    if order == "desc":
        items.reverse()
    after = request.args.get("after")
    if after:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise APIError(400, f"no input item {after!r} in this response", param="after", code="invalid_value")
        items = items[ids.index(after) + 1 :]
    limit = request.args.get("limit", "20")
    if not limit.isdecimal() or not 1 <= int(limit) <= 100:
        raise APIError(400, "limit must be an integer from 1 to 100", param="limit", code="invalid_value")
    page = items[: int(limit)]
    return jsonify(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
    )


# -- reading and shaping --------------------------------------------------------------------


def _collect(relay: JobRelay, builder: ResponseBuilder, timer: GenerationTimer):
    """The whole response as JSON, once its job ends (a client that leaves cancels it)."""
    builder.opening()
    if not read_all(relay, builder.feed, client_socket=request.environ.get("gunicorn.socket"), timer=timer):
        return Response(status=499)  # nobody reads it; its job was cancelled
    body = jsonify(builder.snapshot()).get_data()
    return Response(then(body, relay.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})


def _stream(
    relay: JobRelay, builder: ResponseBuilder, events, after: int, timer: GenerationTimer | None = None
) -> Iterator[str]:
    """The response's events numbered from its first, those after `after` sent. A client that
    leaves ends the reading (and the job, unless the response runs in the background)."""
    try:
        for frame in builder.opening():
            if frame["sequence_number"] > after:
                yield sse_event(frame)
        for event in events:
            if timer:
                timer.observe(event)
            if event is None:
                yield SSE_KEEPALIVE
                continue
            for frame in builder.feed(event):
                if frame["sequence_number"] > after:
                    yield sse_event(frame)
        relay.sent()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        yield sse_event({"type": "error", "sequence_number": builder.seq, **redis_unavailable().body()["error"]})
    finally:
        relay.close(sys.exc_info()[1])
        if timer:
            timer.finish(None)


def _built(ctx: Context, response_id: str, job_id: str, record: dict) -> ResponseBuilder:
    """The response as its job's events so far make it."""
    builder = ResponseBuilder(response_id, record)
    builder.opening()
    for event in _events_so_far(ctx, job_id):
        builder.feed(event)
    return builder


def _events_so_far(ctx: Context, job_id: str) -> list[Event]:
    """The job's events until now, with an ending for a job that can no longer write its own."""
    events = StreamReader(ctx.conn, ctx.keys, job_id).read_all()
    if events and events[-1].is_terminal:
        return events
    job = fetch_job(ctx.conn, job_id)
    ending = (
        ending_without_event(job)
        if job is not None
        else Event(EventType.ERROR, data={"code": "job_expired", "message": "the response's job expired"})
    )
    return [*events, ending] if ending is not None else events


def _stored(ctx: Context, response_id: str) -> tuple[str, dict]:
    match = _ID.fullmatch(response_id)
    raw = ctx.conn.get(ctx.keys.response(match.group(1))) if match else None
    if raw is None:
        raise APIError(
            404,
            f"no response {response_id!r} is stored here (unknown, expired, deleted, or created with store: false)",
            param="response_id",
            code="response_not_found",
        )
    return match.group(1), json.loads(raw)  # type: ignore[union-attr]  # raw is set only with a match


def _conversation_before(ctx: Context, previous_id: str | None) -> list[dict]:
    """The items a response continues from: the previous one's conversation, input and output."""
    if previous_id is None:
        return []
    try:
        job_id, record = _stored(ctx, previous_id)
    except APIError as exc:
        raise APIError(400, exc.message, param="previous_response_id", code="previous_response_not_found") from None
    builder = _built(ctx, previous_id, job_id, record)
    if builder.status not in ("completed", "incomplete"):
        raise APIError(
            400,
            f"response {previous_id!r} is {builder.status}: a conversation continues from a finished one",
            param="previous_response_id",
            code="invalid_value",
        )
    items = [*record["context"], *record["input"], *builder.output]
    if len(items) > MAX_CHAIN:
        raise APIError(400, f"the conversation holds more than {MAX_CHAIN} items", param="previous_response_id")
    return items


_NAMES = {"response_format": "text.format", "messages": "input", "max_tokens": "max_output_tokens"}


def _renamed(param: str | None) -> str | None:
    if param is None:
        return None
    head, dot, rest = param.partition(".")
    if head == "response_format":  # response_format.json_schema.schema → text.format.schema
        rest = rest.removeprefix("json_schema").lstrip(".")
    return _NAMES.get(head, head) + (f".{rest}" if rest else "")


def _record(req: ResponsesRequest, model: str, items: list[dict], context: list[dict]) -> dict:
    dump = req.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "model": model,
        "created_at": int(time.time()),
        **{
            k: dump[k]
            for k in (
                "instructions",
                "max_output_tokens",
                "metadata",
                "previous_response_id",
                "temperature",
                "top_p",
                "user",
                "tool_choice",
                "tools",
                "reasoning",
                "text",
            )
            if k in dump
        },
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "store": req.store,
        "background": req.background,
        "input": items,
        "context": context,
    }
