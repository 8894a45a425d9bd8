"""Chat completions: `POST /v1/chat/completions` (JSON or SSE) and `GET
/v1/chat/completions/<id>` (api/stored.py). Intake (routing, payloads) is api/intake.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import chain

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    request,
)
from rq.job import JobStatus

from contract.context import Context
from contract.keys import Kind
from contract.payloads import ChatJob
from contract.queues import CHAT_FUNC, WAITING, cancel_job, fetch_job, new_job_id
from contract.stream import Event, EventType

from . import request_id, stored
from .bodies import json_body
from .choices import choice_frames, enqueue_choices, first_of, read_choices
from .completions import SSE_DONE, SSE_KEEPALIVE, Completion, sse
from .delivery import enqueue_chat, first_event, read_all, relay_frames, sse_response, then
from .errors import APIError
from .intake import chat_payload
from .relay import JobRelay
from .schemas import ChatCompletionRequest
from .telemetry import GenerationTimer

bp = Blueprint("chat", __name__, url_prefix="/v1")


@bp.post("/chat/completions")
def chat_completions():
    started = time.perf_counter()  # metrics: time to first token counts from here
    ctx = current_app.extensions["mis"]
    job_id = new_job_id()
    request_id.assign(f"chatcmpl-{job_id}")  # one id for the response, the job and the log lines
    req = ChatCompletionRequest.model_validate(json_body(), context={"settings": ctx.settings})
    kind, payload = chat_payload(ctx, req)
    if req.n > 1:
        return _choices(ctx, req, kind, payload, job_id)
    # OpenAI stores only on request (api/delivery.py: what an unstored job leaves).
    job = enqueue_chat(ctx, payload, kind, job_id, store=bool(req.store))
    completion = Completion(completion_id=f"chatcmpl-{job.id}", model=payload.model)
    relay = JobRelay(ctx, job.id, payload.model, forget_when_sent=not req.store)
    timer = GenerationTimer(ctx.conn, ctx.keys, payload.model, started)  # metrics
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = relay.events()
        first = first_event(relay, events, timer)
        return sse_response(_stream(relay, chain([first], events), completion, include_usage, timer))
    return _collect(
        relay,
        completion,
        want_logprobs=bool(req.logprobs),
        client_socket=request.environ.get("gunicorn.socket"),
        timer=timer,
    )


def _choices(ctx: Context, req: ChatCompletionRequest, kind: Kind, payload: ChatJob, job_id: str):
    """n > 1: a job per choice (api/choices.py), choice i seeded `seed + i`."""
    if req.store:
        raise APIError(400, "store is not supported with n > 1: only single answers are kept", param="store")
    payloads = [payload.model_copy(update={"sampling": req.sampling(i)}) for i in range(req.n)]
    fanin = enqueue_choices(ctx, payloads, kind, job_id)
    completion = Completion(completion_id=f"chatcmpl-{job_id}", model=payload.model, n=req.n)
    if not req.stream:
        if not read_choices(fanin, lambda index, event: completion.add(event, index)):
            return Response(status=499)  # nobody reads it; its jobs were cancelled
        body = jsonify(completion.response(bool(req.logprobs))).get_data()
        return Response(then(body, fanin.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})
    usage = bool(req.stream_options and req.stream_options.include_usage)

    def frames(item: tuple[int, Event] | None) -> Iterator[str]:
        if item is None:
            yield SSE_KEEPALIVE
            return
        i, event = item
        if event.type == EventType.START:
            yield sse(completion.chunk({"role": "assistant", "content": ""}, index=i, with_usage=usage))
        elif event.type == EventType.DELTA:
            logprobs = event.data.get("logprobs")
            yield sse(completion.chunk(delta_of(event), logprobs=logprobs, index=i, with_usage=usage))
        elif event.type == EventType.DONE:
            completion.add(event, i)
            finish = completion.choices[i].finish_reason
            yield sse(completion.chunk({}, finish_reason=finish, index=i, with_usage=usage))
            if fanin.finished:
                if usage:
                    yield sse(completion.usage_chunk())
                yield SSE_DONE
                fanin.sent()

    events = fanin.events()
    first = first_of(fanin, events)
    return sse_response(choice_frames(fanin, chain([first], events), frames, lambda error: sse(error.body())))


@bp.get("/chat/completions/<completion_id>")
def get_chat_completion(completion_id: str):
    ctx = current_app.extensions["mis"]
    return jsonify(stored.stored_completion(ctx.conn, ctx.keys, completion_id))


@bp.post("/chat/completions/<completion_id>/cancel")
def cancel_chat_completion(completion_id: str):
    """Extension: stop a queued or running chat job from anywhere (another process, a
    supervisor), as its client leaving would; its client gets the cancellation as an error.
    `status`: `cancelled`, or `finished` when it had already ended."""
    ctx = current_app.extensions["mis"]
    job_id = stored.chat_job_id(completion_id)
    job = fetch_job(ctx.conn, job_id)
    if job is None or job.func_name not in CHAT_FUNC.values():
        raise stored.not_found(completion_id)
    ended = job.get_status(refresh=False) not in (*WAITING, JobStatus.STARTED)
    if not ended:
        cancel_job(ctx, job_id)
    return jsonify(
        {"id": completion_id, "object": "chat.completion.cancel", "status": "finished" if ended else "cancelled"}
    )


def _collect(
    relay: JobRelay,
    completion: Completion,
    want_logprobs: bool,
    client_socket=None,
    timer: GenerationTimer | None = None,
):
    """Read the job to its end for one JSON answer (api/delivery.py)."""
    delivered = read_all(
        relay, completion.add, client_socket=client_socket, timer=timer, usage=lambda: completion.usage
    )
    if not delivered:
        return Response(status=499)  # nobody reads it; its job was cancelled
    body = jsonify(completion.response(want_logprobs)).get_data()
    return Response(then(body, relay.sent), mimetype="application/json", headers={"Content-Length": str(len(body))})


def _stream(
    relay: JobRelay,
    events: Iterator[Event | None],
    completion: Completion,
    include_usage: bool,
    timer: GenerationTimer | None = None,
):
    """SSE frames for one job's events; api/delivery.py relays them (and cancels the job
    when the client disconnects)."""

    def frames(event: Event | None) -> Iterator[str]:
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
            yield sse(completion.chunk({}, finish_reason=completion.finish_reason, with_usage=include_usage), event.id)
            if include_usage:
                yield sse(completion.usage_chunk())
            yield SSE_DONE
            relay.sent()  # resumed after [DONE] was written: the client has it all

    return relay_frames(
        relay,
        events,
        frames,
        lambda error, event_id: sse(error.body(), event_id),
        timer=timer,
        usage=lambda: completion.usage,
    )


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
