"""The OpenAI-compatible endpoints: `POST /v1/chat/completions`, `GET /v1/chat/completions/<id>`
(api/stored.py), `GET /v1/models[/<id>]`."""
from __future__ import annotations

import logging
import select
import socket
import sys
import time
from collections.abc import Iterator
from functools import partial
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

from contract import registry
from contract.keys import Kind, Priority
from contract.payloads import ChatJob
from contract.queues import QueueFull, enqueue_chat, new_job_id
from contract.stream import Event, EventType

from . import autoload, images, request_id, stored
from .completions import SSE_DONE, SSE_KEEPALIVE, Completion, error_from_event, sse
from .errors import APIError, redis_unavailable
from .metrics import GenerationTimer
from .relay import JobRelay
from .schemas import ChatCompletionRequest

log = logging.getLogger("mis.api")
bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.get("/models")
def list_models():
    models = _serving_models()
    return jsonify(object="list", data=[_model_card(m, ws) for m, ws in sorted(models.items())])


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    models = _serving_models()
    if model_id not in models:
        raise _model_not_found(model_id, models)
    return jsonify(_model_card(model_id, models[model_id]))


@bp.post("/chat/completions")
def chat_completions():
    started = time.perf_counter()  # metrics: time to first token counts from here
    ext = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"chatcmpl-{job_id}")  # one id for the response, the job and the log lines
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    req = ChatCompletionRequest.model_validate(body, context={"settings": ext.settings})
    kind, payload = chat_payload(req, ext)
    try:
        job = enqueue_chat(ext.conn, ext.settings, payload, kind=kind,
                           priority=Priority.INTERACTIVE, job_id=job_id)
    except QueueFull as full:
        raise APIError(429, f"model {req.model!r} has {full.depth} requests waiting; retry later",
                       code="queue_full", headers={"Retry-After": "2"}) from None
    completion = Completion(completion_id=f"chatcmpl-{job.id}", model=req.model)
    relay = JobRelay(ext.conn, ext.settings, job.id, req.model)
    timer = GenerationTimer(ext.conn, ext.keys, req.model, started)  # metrics
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = relay.events()
        first = _first_event(relay, events, timer)
        return Response(stream_with_context(_stream(relay, chain([first], events), completion,
                                                    include_usage, timer)),
                        mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _collect(relay, completion, want_logprobs=bool(req.logprobs),
                    client_socket=request.environ.get("gunicorn.socket"), timer=timer)


def chat_payload(req: ChatCompletionRequest, ext, image_ttl: int | None = None) -> tuple[Kind, ChatJob]:
    """The job for a validated request (routed, images checked and stored), and its queue's kind."""
    kind, context_length = route(req.model)
    if req.image_count:
        _check_images_allowed(req, kind, ext.settings)
    store_image = partial(images.intake, settings=ext.settings, conn=ext.conn, keys=ext.keys, ttl=image_ttl)
    return kind, ChatJob(
        model=req.model, messages=[m.to_payload(store_image) for m in req.messages],
        max_tokens=_max_tokens(req.requested_max_tokens() or ext.settings.default_max_tokens, context_length),
        sampling=req.sampling(), stop=req.stop or [], logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
    )


def _max_tokens(requested: int, context_length: int) -> int:
    """Capped by the model's context (0: not known yet); the worker caps it again by what
    the prompt leaves. A cap rather than OpenAI's 400: clients send one max_tokens to many
    models and cannot count our prompt tokens, and `finish_reason: length` says it was hit."""
    return min(requested, context_length) if context_length > 0 else requested


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
    ext = current_app.extensions["mis"]
    return jsonify(stored.stored_completion(ext.conn, ext.keys, completion_id))


def _check_images_allowed(req: ChatCompletionRequest, kind: Kind, settings) -> None:
    if kind != Kind.VISION:
        raise APIError(400, f"model {req.model!r} is a text-only model and does not accept images; "
                       "use a vision model (kind \"vision\" in /v1/models)", param="messages",
                       code="images_not_supported")
    if req.image_count > settings.max_images:
        raise APIError(400, f"a request may hold at most {settings.max_images} images; this one has "
                       f"{req.image_count}", param="messages", code="too_many_images")


def _collect(relay: JobRelay, completion: Completion, want_logprobs: bool, client_socket=None,
             timer: GenerationTimer | None = None):
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
    return jsonify(completion.response(want_logprobs))


def _stream(relay: JobRelay, events: Iterator[Event | None], completion: Completion, include_usage: bool,
            timer: GenerationTimer | None = None):
    """SSE frames for one job's events. A client that disconnects raises GeneratorExit at the
    next write; `finally` then cancels the job."""
    try:
        for event in events:
            if timer:  # metrics
                timer.observe(event)
            if event is None:
                yield SSE_KEEPALIVE
            elif event.type == EventType.START:
                yield sse(completion.chunk({"role": "assistant", "content": ""},
                                           with_usage=include_usage), event.id)
            elif event.type == EventType.DELTA:
                yield sse(completion.chunk({"content": event.data.get("text", "")},
                                           logprobs=event.data.get("logprobs"),
                                           with_usage=include_usage), event.id)
            elif event.type == EventType.DONE:
                completion.add(event)
                yield sse(completion.chunk({}, finish_reason=completion.finish_reason,
                                           with_usage=include_usage), event.id)
                if include_usage:
                    yield sse(completion.usage_chunk())
                yield SSE_DONE
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


def _serving_models() -> dict[str, list[registry.WorkerInfo]]:
    ext = current_app.extensions["mis"]
    return registry.serving_models(registry.live_workers(ext.conn, ext.keys))


def route(model: str) -> tuple[Kind, int]:
    """The kind of queue a request for `model` goes to (that of its live workers, never its
    name) and the model's context length (0 while not known); raises when nobody serves it
    and it cannot be loaded on demand."""
    ext = current_app.extensions["mis"]
    workers = registry.live_workers(ext.conn, ext.keys)
    serving = registry.serving_models(workers)
    if model in serving:
        return serving[model][0].kind, _context_length(serving[model])
    others = [w for w in workers if w.model == model]
    if any(w.state == registry.WorkerState.ERROR for w in others):
        reason = next((w.error for w in others if w.error), "no reason given")
        raise APIError(503, f"model {model!r} failed to load: {reason}", code="model_unavailable",
                       headers={"Retry-After": "30"})
    if others:
        if ext.settings.auto_load:
            return others[0].kind, 0  # loading: the request waits in the queue
        raise APIError(503, f"model {model!r} is loading; retry shortly", code="model_loading",
                       headers={"Retry-After": "5"})
    kind = autoload.start(ext.conn, ext.keys, ext.settings, model)
    if kind is None:
        raise _model_not_found(model, serving)
    return kind, 0


def _context_length(workers: list[registry.WorkerInfo]) -> int:
    """The smallest context its workers report (replicas agree unless loaded differently)."""
    known = [w.context_length for w in workers if w.context_length > 0]
    return min(known) if known else 0


def _model_not_found(model: str, serving: dict) -> APIError:
    live = ", ".join(sorted(serving)) or "none"
    return APIError(404, f"model {model!r} is not served here; live models: {live}",
                    param="model", code="model_not_found")


def _model_card(model_id: str, workers: list[registry.WorkerInfo]) -> dict:
    return {"id": model_id, "object": "model", "owned_by": "mlx-inference-server",
            "created": int(min(w.started_at for w in workers)), "kind": workers[0].kind,
            "workers": len(workers), "context_length": _context_length(workers) or None}
