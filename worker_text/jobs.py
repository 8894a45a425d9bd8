"""rq job functions of the text worker (enqueued by dotted path from the API).

Each engine step is one write to Redis (the step's delta and the job's cancel-flag read)
whose reply is read during the next step (jobs/steps.py), so generation never waits on it.
"""
from __future__ import annotations

import logging

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from jobs.payloads import ChatJob, Usage
from jobs.stream import EventType, StreamWriter
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
    """Write the stream's last event for a job that did not finish, synchronously (after
    dropping any step writes in flight: an interrupted step leaves its connection unusable)."""
    ctx.steps.reset()
    writer = StreamWriter(ctx.conn, ctx.keys, job_id, maxlen=ctx.settings.stream_maxlen,
                          ttl=ctx.settings.result_ttl)
    if isinstance(exc, JobCancelled):
        writer.cancelled(completion_tokens=completion_tokens)
    elif isinstance(exc, RequestRejected):
        writer.error(exc.code, str(exc))
    elif isinstance(exc, JobTimeoutException):
        writer.error("job_timeout", f"generation took longer than the job timeout "
                                    f"({get_current_job().timeout} s, JOB_TIMEOUT)")
    else:
        # rq records the traceback; the client gets a message without internals.
        log.error("job %s failed: %r", job_id, exc)
        writer.error("generation_failed", "the worker failed while generating this response")
