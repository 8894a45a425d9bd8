"""`GET /v1/chat/completions/<id>`: a chat completion read back after its request ended.

A chat job's worker writes the whole answer to the job's token stream, whose `start` event
describes the request (model, created, logprobs). A stored completion (`store: true`) is kept
`RESULT_TTL` with its rq record; any other is kept `UNSTORED_TTL` as its stream alone (rq
keeps no record of its success) and only until its client has been sent the whole answer
(api/chat.py): OpenAI keeps none, and this copy is for a client whose request broke off.
A client whose connection broke, or whose API process was restarted or killed, can fetch
the answer by the `id` it was given (`chatcmpl-<job id>`, also the `X-Request-Id` header),
shaped as OpenAI's stored-completion retrieval (a `chat.completion` object). Only the API
stopping leaves a job running (api/relay.py); a client that disconnects still cancels it.

    finished           → 200 with the completion
    queued or running  → 409 `completion_in_progress`, with Retry-After
    error / cancelled  → the error its request would have got (jobs' codes, api/completions.py)
    unknown or expired → 404 `completion_not_found`
"""

from __future__ import annotations

import re

import redis

from contract.keys import Keys
from contract.queues import CHAT_FUNC, fetch_job
from contract.results import ending_without_event
from contract.stream import Event, EventType, StreamReader

from .completions import Completion, error_from_event
from .errors import APIError

ID_PREFIX = "chatcmpl-"
_JOB_ID = re.compile(r"[0-9a-f]{32}")
"""contract.queues.new_job_id: uuid4 hex. Anything else is no completion of ours."""


def chat_job_id(completion_id: str) -> str:
    """The job of a completion id (`chatcmpl-<job id>`); 404 for anything else."""
    job_id = completion_id.removeprefix(ID_PREFIX)
    if not (completion_id.startswith(ID_PREFIX) and _JOB_ID.fullmatch(job_id)):
        raise not_found(completion_id)
    return job_id


def stored_completion(conn: redis.Redis, keys: Keys, completion_id: str) -> dict:
    job_id = chat_job_id(completion_id)
    job = fetch_job(conn, job_id)
    if job is not None and job.func_name not in CHAT_FUNC.values():
        raise not_found(completion_id)
    events = StreamReader(conn, keys, job_id).read_all()
    if job is None:  # rq kept no record of the success (unstored): the stream is the answer
        if not events or events[-1].type != EventType.DONE or "model" not in events[0].data:
            raise not_found(completion_id)
        ending: Event | None = events[-1]
    else:
        ending = events[-1] if events and events[-1].is_terminal else ending_without_event(job)
    if ending is None:
        raise APIError(
            409,
            f"completion {completion_id!r} is not finished yet; retry shortly",
            code="completion_in_progress",
            headers={"Retry-After": "1"},
        )
    if ending.type != EventType.DONE:
        raise error_from_event(ending)
    if events[0].type != EventType.START:  # the head was trimmed (longer than STREAM_MAXLEN)
        raise not_found(completion_id)
    described = events[0].data  # runtime.engine_loop._described
    completion = Completion(completion_id=completion_id, model=described.get("model", ""))
    completion.created = described.get("created") or completion.created
    for event in events:
        completion.add(event)
    return completion.response(want_logprobs=bool(described.get("logprobs")))


def not_found(completion_id: str) -> APIError:
    return APIError(
        404,
        f"no chat completion {completion_id!r} is kept here (unknown, or expired)",
        param="completion_id",
        code="completion_not_found",
    )
