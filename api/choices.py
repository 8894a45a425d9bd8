"""Requests with several choices (`n` > 1, several legacy prompts): one job per choice, all
on the model's queue at once so they run in the batch together (a text worker admits them in
one step and prefills their common prompt once: worker_text/shared_prefill.py), read as one
(`FanIn`: every job's stream in one XREAD). The answer is the view's: an `add(index, event)` callback for
one JSON body, a `frames(index, event)` function for SSE. An error or cancel of any choice
ends the request with it (the others are cancelled); a client that leaves cancels them all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator

import redis
from flask import request

from contract.context import Context
from contract.keys import Kind
from contract.payloads import ChatJob
from contract.queues import new_job_id
from contract.stream import Event

from .completions import error_from_event
from .delivery import ENDED, client_left, enqueue_chat
from .errors import APIError, redis_unavailable
from .relay import FanIn, JobRelay


def enqueue_choices(ctx: Context, payloads: list[ChatJob], kind: Kind, first_id: str) -> FanIn:
    """The jobs, the first under the request's id; unstored (n > 1 answers are not kept)."""
    relays = []
    try:
        for i, payload in enumerate(payloads):
            job = enqueue_chat(ctx, payload, kind, first_id if i == 0 else new_job_id(), store=False)
            relays.append(JobRelay(ctx, job.id, payload.model, forget_when_sent=True))
    except APIError:  # a full queue midway: what was queued goes
        FanIn(relays).close()
        raise
    return FanIn(relays)


def first_of(fanin: FanIn, events: Iterator[tuple[int, Event] | None]) -> tuple[int, Event] | None:
    """The first event of any choice, before any header goes out: a request the worker
    refuses (the prompt is too long) is an HTTP error for streaming clients too."""
    try:
        first = next(events)
    except BaseException:
        fanin.close(sys.exc_info()[1])
        raise
    if first is not None and first[1].type in ENDED:
        fanin.close()
        raise error_from_event(first[1])
    return first


def read_choices(fanin: FanIn, add: Callable[[int, Event], object]) -> bool:
    """Every choice to its end for one JSON answer; False when the client left (all cancelled)."""
    sock = request.environ.get("gunicorn.socket")
    try:
        for item in fanin.events():
            if item is None:
                if client_left(sock):
                    return False
                continue
            index, event = item
            if event.type in ENDED:
                raise error_from_event(event)
            add(index, event)
    finally:
        fanin.close(sys.exc_info()[1])
    return True


def choice_frames(
    fanin: FanIn,
    events: Iterable[tuple[int, Event] | None],
    frames: Callable[[tuple[int, Event] | None], Iterable[str]],
    error_frame: Callable[[APIError], str],
) -> Iterator[str]:
    """SSE frames for every choice's events as they come; a client that disconnects cancels
    them all (GeneratorExit at the next write)."""
    try:
        for item in events:
            if item is not None and item[1].type in ENDED:
                yield error_frame(error_from_event(item[1]))
                return
            yield from frames(item)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        yield error_frame(redis_unavailable())
    finally:
        fanin.close(sys.exc_info()[1])
