"""rq job functions of the text worker (enqueued by dotted path from the API).

A batching worker (runtime/batching.py) calls a job function when it admits the job: the
function checks the payload on the worker's side of the boundary and returns the request
its engine runs. Generation itself happens in the engine thread, with the other jobs.
"""

from __future__ import annotations

from contract.payloads import ChatJob


def chat(payload: dict) -> ChatJob:
    """A chat completion: the engine streams it into the job's token stream."""
    return ChatJob.model_validate(payload)
