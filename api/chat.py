"""Chat completions: `POST /v1/chat/completions` (JSON or SSE) and `GET
/v1/chat/completions/<id>` (api/stored.py). Intake (routing, payloads) is api/intake.py."""

from __future__ import annotations

import logging
import select
import socket
import sys
import time
from collections.abc import Iterator
from itertools import chain

import redis
from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    request,
    stream_with_context,
)

from contract.queues import JobSpec, QueueFull, enqueue, new_job_id
from contract.stream import Event, EventType

from . import request_id, stored
from .bodies import json_body
from .completions import SSE_DONE, SSE_KEEPALIVE, Completion, error_from_event, sse
from .errors import APIError, redis_unavailable
from .intake import chat_payload
from .relay import JobRelay
from .schemas import ChatCompletionRequest
from .telemetry import GenerationTimer

log = logging.getLogger("mis.api")
bp = Blueprint("chat", __name__, url_prefix="/v1")


@bp.post("/chat/completions")
def chat_completions():
    started = time.perf_counter()  # metrics: time to first token counts from here
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"chatcmpl-{job_id}")  # one id for the response, the job and the log lines
    req = ChatCompletionRequest.model_validate(json_body(), context={"settings": ctx.settings})
    kind, payload = chat_payload(ctx, req)
    try:
        # OpenAI stores only on request. Unstored: rq drops the job as it succeeds, and the
        # stream goes once the answer is sent (below; api/stored.py says why it is kept at all).
        keep = None if req.store else ctx.settings.unstored_ttl
        job = enqueue(ctx, JobSpec.chat(payload, kind, job_id=job_id, keep=keep, record_success=bool(req.store)))
    except QueueFull as full:
        raise APIError(
            429,
            f"model {req.model!r} has {full.depth} requests waiting; retry later",
            code="queue_full",
            headers={"Retry-After": "2"},
        ) from None
    completion = Completion(completion_id=f"chatcmpl-{job.id}", model=payload.model)
    relay = JobRelay(ctx, job.id, payload.model, forget_when_sent=not req.store)
    timer = GenerationTimer(ctx.conn, ctx.keys, payload.model, started)  # metrics
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = relay.events()
        first = _first_event(relay, events, timer)
        return Response(
            stream_with_context(_stream(relay, chain([first], events), completion, include_usage, timer)),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return _collect(
        relay,
        completion,
        want_logprobs=bool(req.logprobs),
        client_socket=request.environ.get("gunicorn.socket"),
        timer=timer,
    )


def _first_event(relay: JobRelay, events: Iterator[Event | None], timer: GenerationTimer) -> Event | None:
    """A streaming job's first event, read before any header goes out, so a request the
    worker refuses on admission (`context_length_exceeded`, say) is a real HTTP error for
    streaming clients too. The wait is short: the relay yields None after one keepalive
    interval of silence (a queued job), and then the 200 and keepalives go out as before."""
    try:
        first = next(events)
    except BaseException:
        relay.close(sys.exc_info()[1])
        timer.finish(None)
        raise
    if first is not None and first.type in (EventType.ERROR, EventType.CANCELLED):
        timer.observe(first)
        relay.close()
        timer.finish(None)
        raise error_from_event(first)
    return first


@bp.get("/chat/completions/<completion_id>")
def get_chat_completion(completion_id: str):
    ctx = current_app.extensions["mis"]
    return jsonify(stored.stored_completion(ctx.conn, ctx.keys, completion_id))


def _collect(
    relay: JobRelay,
    completion: Completion,
    want_logprobs: bool,
    client_socket=None,
    timer: GenerationTimer | None = None,
):
    """Read the job to its end for one JSON answer. Nothing is written to the client until
    then, so a client that gives up is noticed by peeking at its socket now and then."""
    next_check = time.monotonic() + relay.settings.keepalive_interval
    try:
        for event in relay.events():
            if time.monotonic() >= next_check:
                if client_left(client_socket):
                    return Response(status=499)  # nobody reads it; the job is cancelled below
                next_check = time.monotonic() + relay.settings.keepalive_interval
            if timer:  # metrics
                timer.observe(event)
            if event is None:
                continue
            if event.type in (EventType.ERROR, EventType.CANCELLED):
                raise error_from_event(event)
            completion.add(event)
    finally:
        relay.close(sys.exc_info()[1])
        if timer:  # metrics
            timer.finish(completion.usage)
    body = jsonify(completion.response(want_logprobs)).get_data()
    return Response(_then(body, relay.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})


def _then(body: bytes, after) -> Iterator[bytes]:
    """The body, then `after()` — run only once the server has written the body: it asks
    for the next chunk after a write succeeds, and closes the generator when one fails."""
    yield body
    after()


def _stream(
    relay: JobRelay,
    events: Iterator[Event | None],
    completion: Completion,
    include_usage: bool,
    timer: GenerationTimer | None = None,
):
    """SSE frames for one job's events. A client that disconnects raises GeneratorExit at the
    next write; `finally` then cancels the job."""
    try:
        for event in events:
            if timer:  # metrics
                timer.observe(event)
            if event is None:
                yield SSE_KEEPALIVE
            elif event.type == EventType.START:
                yield sse(completion.chunk({"role": "assistant", "content": ""}, with_usage=include_usage), event.id)
            elif event.type == EventType.DELTA:
                yield sse(
                    completion.chunk(delta_of(event), logprobs=event.data.get("logprobs"), with_usage=include_usage),
                    event.id,
                )
            elif event.type == EventType.DONE:
                completion.add(event)
                yield sse(
                    completion.chunk({}, finish_reason=completion.finish_reason, with_usage=include_usage), event.id
                )
                if include_usage:
                    yield sse(completion.usage_chunk())
                yield SSE_DONE
                relay.sent()  # resumed after [DONE] was written: the client has it all
            else:
                yield sse(error_from_event(event).body(), event.id)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # Redis went away mid-stream: end with an error event, not a cut connection.
        log.warning("lost Redis while relaying job %s: %s", relay.job_id, exc)
        yield sse(redis_unavailable().body())
    finally:
        relay.close(sys.exc_info()[1])
        if timer:  # metrics
            timer.finish(completion.usage)


def delta_of(event: Event) -> dict:
    """An SSE chunk's `delta` for a delta event: its text, its reasoning (`reasoning_content`,
    as DeepSeek's and vLLM's APIs send it), its tool-call fragments (OpenAI's shape: index,
    id, type and name first, then `arguments` pieces)."""
    calls, reasoning = event.data.get("tool_calls"), event.data.get("reasoning")
    delta: dict = {}
    if reasoning:
        delta["reasoning_content"] = reasoning
    if event.data.get("text") or not (calls or reasoning):
        delta["content"] = event.data.get("text", "")
    if calls:
        delta["tool_calls"] = calls
    return delta


def client_left(sock) -> bool:
    """True when the client closed its connection (a readable socket with nothing to read).
    A client may also have sent more bytes (a pipelined request): then it is still there."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
