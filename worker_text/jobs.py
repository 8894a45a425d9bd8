"""rq job functions of the text worker (enqueued by dotted path from the API).

Each engine step costs one Redis round trip: the step's delta and the job's cancel-flag read
go in one pipeline.
"""
from __future__ import annotations

import logging

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from jobs.cancel import queue_cancel_check
from jobs.payloads import ChatJob, Usage
from jobs.stream import StreamWriter
from jobs.worker import JobCancelled, WorkerContext, current_context

from .engine import RequestRejected, Step, generate

log = logging.getLogger("mis.worker_text")


def chat(payload: dict) -> dict:
    """Generate one chat completion into the job's token stream; returns the usage."""
    ctx = current_context()
    rq_job = get_current_job()
    job_id = rq_job.id
    job = ChatJob.model_validate(payload)
    writer = StreamWriter(ctx.conn, ctx.keys, job_id, maxlen=ctx.settings.stream_maxlen,
                          ttl=ctx.settings.result_ttl)
    prompt = ctx.engine.encode_chat(job)
    writer.start(prompt_tokens=len(prompt))
    completion_tokens = 0
    try:
        for step in generate(ctx.engine, job, prompt):
            completion_tokens = step.completion_tokens
            _relay_step(ctx, writer, job_id, step)
            if step.finish_reason is not None:
                usage = Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens,
                              total_tokens=len(prompt) + completion_tokens)
                writer.done(step.finish_reason, usage.model_dump())
                return usage.model_dump()
        raise RuntimeError("generation ended without a finish reason")
    except JobCancelled:
        writer.cancelled(completion_tokens=completion_tokens)
        raise
    except RequestRejected as exc:
        writer.error(exc.code, str(exc))
        raise
    except JobTimeoutException:
        writer.error("job_timeout", f"generation took longer than the job timeout "
                                    f"({rq_job.timeout} s, JOB_TIMEOUT)")
        raise
    except Exception:
        # rq records the traceback; the client gets a message without internals.
        log.exception("job %s failed", job_id)
        writer.error("generation_failed", "the worker failed while generating this response")
        raise
    finally:
        ctx.count_job(completion_tokens)


def _relay_step(ctx: WorkerContext, writer: StreamWriter, job_id: str, step: Step) -> None:
    pipe = ctx.conn.pipeline(transaction=False)
    if step.text or step.logprob is not None:
        extra = {"logprobs": [step.logprob.model_dump()]} if step.logprob is not None else {}
        writer.delta(step.text, pipeline=pipe, **extra)
    queue_cancel_check(pipe, ctx.keys, job_id)
    cancelled = pipe.execute()[-1]
    if cancelled and step.finish_reason is None:
        raise JobCancelled(job_id)
