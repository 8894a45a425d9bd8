"""Delivering a chat job to its HTTP client, for every view that runs one (chat completions,
Anthropic's messages): enqueueing it, reading its first event before any header goes out,
reading it to its end for one JSON body, or relaying its events as SSE frames. Whichever
way, a client that leaves cancels its job (`JobRelay.close`). What the answer looks like is
the view's: an `add` callback, a `frames` function, an error frame.
"""

from __future__ import annotations

import logging
import select
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import redis
from flask import Response, g, stream_with_context
from rq.job import Job

from contract import prefixes
from contract.context import Context
from contract.keys import Kind, Priority
from contract.payloads import ChatJob
from contract.queues import JobSpec, QueueFull, enqueue
from contract.stream import Event, EventType

from .completions import error_from_event
from .errors import APIError, redis_unavailable
from .relay import JobRelay
from .telemetry import GenerationTimer

log = logging.getLogger("mis.api")

ENDED = (EventType.ERROR, EventType.CANCELLED)
"""Endings that are errors to the client."""


def enqueue_chat(
    ctx: Context, payload: ChatJob, kind: Kind, job_id: str, *, store: bool, keep: int | None = None
) -> Job:
    """Put a chat job on its model's interactive queue; a full queue is a 429. Unstored (the
    default): rq drops the job as it succeeds, and the relay deletes its stream once the
    answer is sent (api/stored.py says why it is kept at all). A stored one is kept `keep`
    seconds (RESULT_TTL by default; a stored response RESPONSES_TTL)."""
    keep = keep if store else ctx.settings.unstored_ttl
    return enqueue_job(ctx, JobSpec.chat(payload, kind, job_id=job_id, keep=keep, record_success=store))


def enqueue_job(ctx: Context, spec: JobSpec) -> Job:
    """Put a request's job on its model's queue — or, for a text chat, on the queue of the
    worker holding its conversation's prefix (contract/prefixes.py); a full queue is a 429."""
    payload = spec.payload
    routed = ctx.settings.prefix_routing and spec.kind == Kind.TEXT and spec.priority == Priority.INTERACTIVE
    if routed and isinstance(payload, ChatJob) and payload.prompt is None:
        workers = g.get("live_workers")  # as api/intake.route read them for this request
        prefixes.route(ctx.conn, ctx.keys, spec, payload.messages, payload.tools, ctx.settings.prefix_ttl, workers)
    try:
        return enqueue(ctx, spec)
    except QueueFull as full:
        raise APIError(
            429,
            f"model {spec.model!r} has {full.depth} requests waiting; retry later",
            code="queue_full",
            headers={"Retry-After": "2"},
        ) from None


def first_event(relay: JobRelay, events: Iterator[Event | None], timer: GenerationTimer) -> Event | None:
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
    if first is not None and first.type in ENDED:
        timer.observe(first)
        relay.close()
        timer.finish(None)
        raise error_from_event(first)
    return first


def read_all(
    relay: JobRelay,
    add: Callable[[Event], object],
    *,
    client_socket=None,
    timer: GenerationTimer | None = None,
    usage: Callable[[], dict | None] = lambda: None,
) -> bool:
    """Read the job to its end for one JSON answer, passing each event to `add`; an error
    ending raises it. Nothing is written to the client until then, so a client that gives up
    is noticed by peeking at its socket now and then: False (its job is cancelled)."""
    next_check = time.monotonic() + relay.settings.keepalive_interval
    try:
        for event in relay.events():
            if time.monotonic() >= next_check:
                if client_left(client_socket):
                    return False  # nobody reads it; the job is cancelled below
                next_check = time.monotonic() + relay.settings.keepalive_interval
            if timer:  # metrics
                timer.observe(event)
            if event is None:
                continue
            if event.type in ENDED:
                raise error_from_event(event)
            add(event)
    finally:
        relay.close(sys.exc_info()[1])
        if timer:  # metrics
            timer.finish(usage())
    return True


def relay_frames(
    relay: JobRelay,
    events: Iterable[Event | None],
    frames: Callable[[Event | None], Iterable[str]],
    error_frame: Callable[[APIError, str | None], str],
    *,
    timer: GenerationTimer | None = None,
    usage: Callable[[], dict | None] = lambda: None,
) -> Iterator[str]:
    """SSE frames for one job's events: `frames` shapes each event (None: a keepalive is
    due), `error_frame` an error that ends the stream (with its event's id, if any). A
    client that disconnects raises GeneratorExit at the next write; `finally` then cancels
    the job."""
    try:
        for event in events:
            if timer:  # metrics
                timer.observe(event)
            if event is not None and event.type in ENDED:
                yield error_frame(error_from_event(event), event.id)
            else:
                yield from frames(event)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # Redis went away mid-stream: end with an error event, not a cut connection.
        log.warning("lost Redis while relaying job %s: %s", relay.job_id, exc)
        yield error_frame(redis_unavailable(), None)
    finally:
        relay.close(sys.exc_info()[1])
        if timer:  # metrics
            timer.finish(usage())


def then(body: bytes, after: Callable[[], None]) -> Iterator[bytes]:
    """The body, then `after()` — run only once the server has written the body: it asks
    for the next chunk after a write succeeds, and closes the generator when one fails."""
    yield body
    after()


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


def sse_response(frames: Iterator[str]) -> Response:
    """A streamed answer: Server-Sent Events, never cached or buffered by a proxy."""
    return Response(
        stream_with_context(frames),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
