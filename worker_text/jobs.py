"""rq job functions of the text worker (enqueued by dotted path from the API).

Each engine step is one write to Redis (the step's delta and the job's cancel-flag read)
whose reply is read during the next step (jobs/steps.py), so generation never waits on it.
"""
from __future__ import annotations

import logging

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from jobs.payloads import ChatJob, Usage
from jobs.stream import EventType
from jobs.worker import JobCancelled, WorkerContext, current_context

from .engine import RequestRejected, generate

log = logging.getLogger("mis.worker_text")


def chat(payload: dict) -> dict:
    """Generate one chat completion into the job's token stream; returns the usage."""
    ctx = current_context()
    rq_job = get_current_job()
    job_id = rq_job.id
    job = ChatJob.model_validate(payload)
    completion_tokens = 0
    try:
        prompt = ctx.engine.encode_chat(job)
        ctx.steps.send([(job_id, EventType.START, {"prompt_tokens": len(prompt)})], watch=[job_id])
        for step in generate(ctx.engine, job, prompt):
            completion_tokens = step.completion_tokens
            events = []
            if step.text or step.logprob is not None:
                extra = {"logprobs": [step.logprob.model_dump()]} if step.logprob is not None else {}
                events.append((job_id, EventType.DELTA, {"text": step.text, **extra}))
            if step.finish_reason is not None:
                usage = Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens,
                              total_tokens=len(prompt) + completion_tokens).model_dump()
                events.append((job_id, EventType.DONE, {"finish_reason": step.finish_reason, "usage": usage}))
                ctx.steps.send(events)
                ctx.steps.flush()
                return usage
            if job_id in ctx.steps.send(events, watch=[job_id]):
                raise JobCancelled(job_id)
        raise RuntimeError("generation ended without a finish reason")
    except BaseException as exc:
        _end_stream(ctx, job_id, exc, completion_tokens)
        raise
    finally:
        ctx.count_job(completion_tokens)


def _end_stream(ctx: WorkerContext, job_id: str, exc: BaseException, completion_tokens: int) -> None:
    """Write the last event of a job that did not finish, and wait until it is in Redis.
    The step sender is consistent here even if `exc` interrupted one of its writes (it
    resets itself then), so the ending goes through it like any other step."""
    if isinstance(exc, JobCancelled):
        ending = (EventType.CANCELLED, {"completion_tokens": completion_tokens})
    elif isinstance(exc, RequestRejected):
        ending = (EventType.ERROR, {"code": exc.code, "message": str(exc)})
    elif isinstance(exc, JobTimeoutException):
        ending = (EventType.ERROR, {"code": "job_timeout", "message": (
            f"generation took longer than the job timeout ({get_current_job().timeout} s, JOB_TIMEOUT)")})
    else:
        # rq records the traceback; the client gets a message without internals.
        log.error("job %s failed: %r", job_id, exc)
        ending = (EventType.ERROR, {"code": "generation_failed",
                                    "message": "the worker failed while generating this response"})
    ctx.steps.send([(job_id, *ending)])
    ctx.steps.flush()
