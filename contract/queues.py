"""Putting jobs on rq queues and taking them off again: the one way to enqueue (`JobSpec` →
`enqueue` / `enqueue_many`) and the one way to cancel (`cancel_job`).

Jobs are enqueued by dotted path (`worker_text.jobs.chat`) so the API never imports worker
code. Each job carries one keyword argument, `payload`, a JSON-clean dict. A job's lifetimes
follow its priority: interactive work may wait QUEUED_TTL in a queue bounded by the model's
depth limit (429 beyond it); batch work (document pages, batch lines and their bookkeeping
jobs) may wait BATCH_QUEUED_TTL in an unbounded queue. Outcomes are kept RESULT_TTL.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import cast

import redis
from pydantic import BaseModel
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.job_lifecycle import record_job_failure  # rq 3.0 (pinned)
from rq.registry import StartedJobRegistry

from contract.context import Context
from contract.keys import Kind, Priority, queue_name
from contract.payloads import ChatJob
from contract.stream import EventType, StreamWriter

CHAT_FUNC = {Kind.TEXT: "worker_text.jobs.chat", Kind.VISION: "worker_vision.jobs.chat"}
EMBED_FUNC = "worker_embedding.jobs.embed"
WAITING = frozenset({JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED})
"""rq statuses of a job that no worker has taken yet."""


class QueueFull(Exception):
    """The model's interactive queue holds as many jobs as its limit allows."""

    def __init__(self, depth: int):
        super().__init__(f"queue depth {depth}")
        self.depth = depth


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class JobSpec:
    """One job to enqueue: what runs, on which model's queue, and what it waits for."""

    func: str
    """Dotted path of the job function (CHAT_FUNC[kind] for chat, a bookkeeping function)."""
    payload: dict | BaseModel
    kind: Kind
    model: str
    priority: Priority = Priority.INTERACTIVE
    retries: int = 0
    """Extra attempts when its worker dies or it fails (rq's Retry)."""
    after: list[Job] = field(default_factory=list)
    """Jobs that must end first, failed or not (a fan-in)."""
    job_id: str = field(default_factory=new_job_id)
    keep: int | None = None
    """Seconds its outcome (rq record, token stream) is kept after it ends; None: RESULT_TTL."""
    direct: str | None = None
    """A worker's own queue (`direct:<worker>`, contract/prefixes.py) instead of the model's."""
    meta: dict = field(default_factory=dict)
    """rq job meta: the prefixes a chat's worker will hold, the queue a routed job goes back to."""
    record_success: bool = True
    """False: rq keeps no record of a success (result_ttl 0: the job and its 4 KB result
    stream are deleted as it finishes); its token stream is then the only copy of the answer,
    kept `keep` seconds (an unstored chat completion, api/chat.py). Failures stay `keep`."""

    @classmethod
    def chat(cls, payload: ChatJob, kind: Kind, **options) -> JobSpec:
        return cls(CHAT_FUNC[kind], payload, kind, payload.model, **options)

    @property
    def queue(self) -> str:
        return self.direct or queue_name(self.kind, self.model, self.priority)

    def options(self, ctx: Context) -> dict:
        """rq's enqueue arguments for this job."""
        s = ctx.settings
        payload = self.payload.model_dump(mode="json") if isinstance(self.payload, BaseModel) else self.payload
        waits = s.queued_ttl if self.priority == Priority.INTERACTIVE else s.batch_queued_ttl
        kept = self.keep or s.result_ttl
        return dict(
            kwargs={"payload": payload},
            job_id=self.job_id,
            timeout=s.job_timeout,
            ttl=waits,
            result_ttl=kept if self.record_success else 0,
            failure_ttl=kept,
            retry=Retry(max=self.retries) if self.retries else None,
            depends_on=Dependency(jobs=self.after, allow_failure=True) if self.after else None,
            meta=self.meta or None,
        )


def enqueue(ctx: Context, spec: JobSpec) -> Job:
    """Put one job on its queue; an interactive queue at its depth limit raises QueueFull.

    One round trip where rq took three (the depth, rq's queue index, the job): the depth is
    read in the transaction that enqueues, and a job that finds its queue full is taken back
    out. A job with dependencies goes rq's own way (it watches them in a transaction of its own)."""
    queue = Queue(spec.queue, connection=ctx.conn)
    if spec.after:
        return queue.enqueue_call(spec.func, **spec.options(ctx))
    bounded = spec.priority == Priority.INTERACTIVE and spec.direct is None  # a routed job starts at once
    pipe = ctx.conn.pipeline()
    pipe.multi()  # rq would open the transaction itself, after our first command (an error)
    if bounded:
        pipe.llen(queue.key)
    job = queue.enqueue_call(spec.func, pipeline=pipe, **spec.options(ctx))
    replies = pipe.execute()
    # A full queue: back out, unless a worker took the job already (the queue had room after all).
    if bounded and (depth := int(replies[0])) >= ctx.settings.queue_depth_limit(spec.model) and queue.remove(job.id):
        job.delete(remove_from_queue=False)
        raise QueueFull(depth)
    return job


def enqueue_many(ctx: Context, specs: list[JobSpec]) -> list[Job]:
    """Jobs for one queue (batch work: no depth limit), in one round trip."""
    if not specs:
        return []
    queue = Queue(specs[0].queue, connection=ctx.conn)
    assert all(s.queue == queue.name for s in specs), "enqueue_many takes jobs of one queue"
    return queue.enqueue_many([Queue.prepare_data(s.func, **s.options(ctx)) for s in specs])


def fetch_job(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return None


def request_cancel(ctx: Context, job_id: str, pipeline=None) -> None:
    """Set the job's cancel flag. Cancellation is cooperative (rq's stop-job command does
    nothing to in-process workers): the worker running the job reads the flag every step."""
    (pipeline if pipeline is not None else ctx.conn).set(ctx.keys.cancel(job_id), 1, ex=ctx.settings.cancel_ttl)


def cancel_job(ctx: Context, job_id: str) -> None:
    """Stop a job wherever it is. Waiting (queued, or deferred behind other jobs): rq takes
    it off its queue, and a chat job's stream is ended here, since no worker will ever write
    it. Running: the flag makes its worker drop it within one engine step, and the worker
    ends the stream. Ended: nothing changes."""
    request_cancel(ctx, job_id)
    job = fetch_job(ctx.conn, job_id)
    if job is None or job.get_status(refresh=False) not in WAITING:
        return
    if mark_canceled(job) and job.func_name in CHAT_FUNC.values():
        writer = StreamWriter(
            ctx.conn, ctx.keys, job_id, maxlen=ctx.settings.stream_maxlen, ttl=ctx.settings.result_ttl
        )
        writer.cancelled(reason="cancelled while queued")


def mark_canceled(job: Job) -> bool:
    """rq's cancel (off its queue or registry, status canceled); False when someone else
    (the API, or the worker recording its outcome) got there first."""
    try:
        job.cancel()
    except InvalidJobOperation:
        return False
    return True


def fail_waiting(ctx: Context, kind: Kind, model: str, code: str, message: str) -> list[str]:
    """End every job still waiting in a model's queues with an error (its load failed, and no
    worker serves it): its stream says why, rq calls it failed, and what depends on it (a
    document's aggregate, a batch's finalize) runs — so batches and documents end rather than
    wait out BATCH_QUEUED_TTL. Returns the jobs ended."""
    ended = []
    for priority in Priority:
        queue = Queue(queue_name(kind, model, priority), connection=ctx.conn)
        for job in queue.get_jobs():
            if job.get_status(refresh=False) not in WAITING:
                continue
            if job.func_name in CHAT_FUNC.values():
                writer = StreamWriter(ctx.conn, ctx.keys, job.id, maxlen=ctx.settings.stream_maxlen,
                                      ttl=ctx.settings.result_ttl)  # fmt: skip
                writer.write(EventType.ERROR, {"code": code, "message": message})
            with ctx.conn.pipeline() as pipe:
                queue.remove(job, pipeline=pipe)
                record_job_failure(job, f"{code}: {message}", pipe)
                pipe.execute()
            queue.enqueue_dependents(job)
            ended.append(job.id)
    return ended


def reap_orphaned_job(conn: redis.Redis, job: Job) -> None:
    """Fail (or requeue, with retries left) a started job whose worker is known to be dead,
    as rq's abandoned-job cleanup does once the job's execution expires. Its execution
    expires with the worker's heartbeat (runtime/batching.py), so everything in the started
    registry that expires no later than it is abandoned too; cutting at its own score
    (the worker's clock, not ours) touches no live worker's job."""
    registry = StartedJobRegistry(job.origin, connection=conn)
    prefix = f"{job.id}:".encode()
    members = cast(list[tuple[bytes, float]], conn.zrange(registry.key, 0, -1, withscores=True))
    scores = [score for member, score in members if member.startswith(prefix)]
    if scores:
        registry.cleanup(timestamp=max(scores) + 0.001)
