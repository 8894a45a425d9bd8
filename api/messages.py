"""Anthropic's Messages API: `POST /v1/messages` (JSON or SSE) and
`POST /v1/messages/count_tokens`, so Anthropic's SDKs and Claude Code can use a local model
(`ANTHROPIC_BASE_URL`).

A thin layer over the chat path: the request is translated into a chat completion request
(api/anthropic_chat.py), which is validated, routed and enqueued exactly as
`/v1/chat/completions` does it (unstored: nothing stays once the answer is sent), and the
job's events are shaped as Anthropic's (api/anthropic_shape.py). Every error on these routes
— the API key's too — is in Anthropic's shape. `anthropic-version` and `anthropic-beta`
headers are accepted and change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import chain

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from contract.context import Context
from contract.keys import Kind
from contract.payloads import ChatJob
from contract.queues import new_job_id
from contract.stream import Event, EventType

from . import request_id
from .anthropic_chat import to_chat
from .anthropic_request import MessagesInput, MessagesRequest, ThinkingAdaptive, ThinkingEnabled
from .anthropic_shape import MessageBuilder, error_body, error_frame, sse_event
from .bodies import json_body
from .delivery import enqueue_chat, first_event, read_all, relay_frames, sse_response, then
from .errors import as_api_error, render
from .intake import chat_payload
from .relay import JobRelay
from .schemas import ChatCompletionRequest
from .telemetry import GenerationTimer

bp = Blueprint("messages", __name__, url_prefix="/v1")


@bp.errorhandler(Exception)
def anthropic_error(exc: Exception):
    """Errors on these routes, from the app's hooks (API keys, bodies) too, in Anthropic's
    shape: the one translation (api/errors.py), another body."""
    return render(as_api_error(exc), error_body)


@bp.after_request
def request_id_header(response: Response) -> Response:
    response.headers["request-id"] = request_id.current()  # where Anthropic's SDKs read it
    return response


@bp.post("/messages")
def create_message():
    started = time.perf_counter()  # metrics: time to first token counts from here
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"msg_{job_id}")  # one id for the message, the job and the log lines
    req = MessagesRequest.model_validate(json_body(), context={"settings": ctx.settings})
    kind, payload = _payload(ctx, req)
    job = enqueue_chat(ctx, payload, kind, job_id, store=False)
    relay = JobRelay(ctx, job.id, payload.model, forget_when_sent=True)
    timer = GenerationTimer(ctx.conn, ctx.keys, payload.model, started)  # metrics
    shown = not isinstance(req.thinking, ThinkingEnabled | ThinkingAdaptive) or req.thinking.display != "omitted"
    builder = MessageBuilder(f"msg_{job.id}", payload.model, req.max_tokens, show_thinking=shown)
    if req.stream:
        events = relay.events()
        first = first_event(relay, events, timer)
        frames = relay_frames(
            relay,
            chain([first], events),
            lambda event: _frames(builder, relay, event),
            error_frame,
            timer=timer,
            usage=lambda: builder.usage,
        )
        return sse_response(frames)
    client = request.environ.get("gunicorn.socket")
    if not read_all(relay, builder.add, client_socket=client, timer=timer, usage=lambda: builder.usage):
        return Response(status=499)  # nobody reads it; its job was cancelled
    return _json_then(builder.message(), relay)


@bp.post("/messages/count_tokens")
def count_tokens():
    """The prompt's tokens as the model's worker renders and encodes it (the API never
    tokenizes): a job that the worker counts and ends without generating."""
    ctx = current_app.extensions["mis"]
    req = MessagesInput.model_validate(json_body(), context={"settings": ctx.settings})
    kind, payload = _payload(ctx, req)
    job = enqueue_chat(ctx, payload.model_copy(update={"count_only": True}), kind, new_job_id(), store=False)
    relay = JobRelay(ctx, job.id, payload.model, forget_when_sent=True)
    usage: dict = {}

    def add(event: Event) -> None:
        if event.type == EventType.DONE:
            usage.update(event.data["usage"])

    if not read_all(relay, add, client_socket=request.environ.get("gunicorn.socket")):
        return Response(status=499)
    return _json_then({"input_tokens": usage["prompt_tokens"]}, relay)


@bp.route("/messages", methods=["GET", "PUT", "PATCH", "DELETE"])
def messages_methods():
    raise MethodNotAllowed(valid_methods=["POST"])  # routed here, so it is told in Anthropic's shape


@bp.route("/messages/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str):
    raise NotFound()  # Message Batches, say: not served here, and told in Anthropic's shape


def _payload(ctx: Context, req: MessagesInput) -> tuple[Kind, ChatJob]:
    """The chat job for a Messages request: translated, then through the chat path's
    validation and intake. Their errors name the Messages request's fields (error_body)."""
    body, g.anthropic_origin = to_chat(req)
    chat = ChatCompletionRequest.model_validate(body, context={"settings": ctx.settings})
    return chat_payload(ctx, chat)


def _frames(builder: MessageBuilder, relay: JobRelay, event: Event | None) -> Iterator[str]:
    for data in builder.feed(event):
        yield sse_event(data)
    if event is not None and event.type == EventType.DONE:
        relay.sent()  # resumed after message_stop was written: the client has it all


def _json_then(answer: dict, relay: JobRelay) -> Response:
    """The answer, with the relay told once it has been written (api/delivery.py)."""
    body = jsonify(answer).get_data()
    return Response(then(body, relay.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})
