"""Putting jobs on rq queues and taking them off again.

Jobs are enqueued by dotted path (`worker_text.jobs.chat`) so the API never imports worker
code. Each job carries one keyword argument, `payload`, a JSON-clean dict.
"""
from __future__ import annotations

import uuid

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from contract.cancel import request_cancel
from contract.keys import Keys, Kind, Priority, queue_name
from contract.payloads import ChatJob
from contract.settings import Settings
from contract.stream import StreamWriter

CHAT_FUNC = {Kind.TEXT: "worker_text.jobs.chat", Kind.VISION: "worker_vision.jobs.chat"}


class QueueFull(Exception):
    """The model's queue holds as many jobs as its limit allows."""

    def __init__(self, depth: int):
        super().__init__(f"queue depth {depth}")
        self.depth = depth


def new_job_id() -> str:
    return uuid.uuid4().hex


def enqueue_chat(
    conn: redis.Redis,
    settings: Settings,
    payload: ChatJob,
    *,
    kind: Kind = Kind.TEXT,
    priority: Priority = Priority.INTERACTIVE,
    job_id: str | None = None,
) -> Job:
    queue = Queue(queue_name(kind, payload.model, priority), connection=conn)
    depth = queue.count
    if depth >= settings.queue_depth_limit(payload.model):
        raise QueueFull(depth)
    return queue.enqueue_call(
        CHAT_FUNC[kind],
        kwargs={"payload": payload.model_dump(mode="json")},
        job_id=job_id or new_job_id(),
        timeout=settings.job_timeout,
        ttl=settings.queued_ttl,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl,
    )


def batch_lifetimes(settings: Settings) -> dict:
    """rq lifetimes of batch-queue work (document pages, batch lines and their bookkeeping
    jobs): they may wait BATCH_QUEUED_TTL for a free slot; outcomes are kept RESULT_TTL."""
    return dict(timeout=settings.job_timeout, ttl=settings.batch_queued_ttl,
                result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl)


def fetch_job(conn: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return None


def cancel_job(conn: redis.Redis, settings: Settings, job_id: str) -> None:
    """Stop a job wherever it is. Queued: rq takes it off the queue and the stream is ended
    here, since no worker will ever write it. Running: the flag makes its worker drop it
    within one engine step, and the worker ends the stream."""
    keys = Keys(settings.key_prefix)
    request_cancel(conn, keys, job_id, settings.cancel_ttl)
    job = fetch_job(conn, job_id)
    if job is None or job.get_status(refresh=False) != JobStatus.QUEUED:
        return
    try:
        job.cancel()
    except InvalidJobOperation:
        return
    writer = StreamWriter(conn, keys, job_id, maxlen=settings.stream_maxlen, ttl=settings.result_ttl)
    writer.cancelled(reason="cancelled while queued")


def reap_orphaned_job(conn: redis.Redis, job: Job) -> None:
    """Fail (or requeue, with retries left) a started job whose worker is known to be dead,
    as rq's abandoned-job cleanup does once the job's execution expires. Its execution
    expires with the worker's heartbeat (runtime/batching.py), so everything in the started
    registry that expires no later than it is abandoned too; cutting at its own score
    (the worker's clock, not ours) touches no live worker's job."""
    registry = StartedJobRegistry(job.origin, connection=conn)
    prefix = f"{job.id}:".encode()
    scores = [score for member, score in conn.zrange(registry.key, 0, -1, withscores=True)
              if member.startswith(prefix)]
    if scores:
        registry.cleanup(timestamp=max(scores) + 0.001)
