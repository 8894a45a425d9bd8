"""Burst admission: the jobs waiting behind a dequeued job are admitted in the same pass.

rq starts one job per dequeue, with about four Redis round trips of bookkeeping each
(`prepare_execution`, `prepare_job_execution`, then our cancel flag and prefix routing). Under
a burst of N requests the engine thus received them one by one and prefilled them in small
pieces, so time to first token grew with the burst. Here the admission loop, having dequeued
one job the rq way (a blocking pop), takes as many more as it has free slots for (every queue
popped in one Lua step), reads them in one round trip (`Job.fetch_many`), and writes every job's start
bookkeeping — what rq's two methods write, plus reading the cancel flag and publishing the
held prefixes — in one pipelined round trip. The engine then gets all of them at once
(`EngineLoop.submit_many`) and prefills them together. A lone request pays two round trips
(the empty pop, the bookkeeping) instead of four.

The extra jobs are popped the way rq's multi-queue dequeue pops (LPOP, no intermediate
list): a worker killed between the pop and the bookkeeping loses them the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import redis
from redis.commands.core import Script
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from contract.keys import Keys, Priority
from contract.prefixes import held_prefix_sets


@dataclass
class Started:
    job: Job
    queue: Queue
    execution: Execution
    cancelled: bool


_POP_WITH_ROOM = """
-- KEYS: queues in the order they are served; ARGV: each one's priority ('i' interactive or
-- 'b' batch), then the room for interactive jobs and for batch jobs. Pops as many of each
-- queue as room is left, a job of either priority filling a slot batch work could have had.
-- Returns each queue's ids, then the room left for interactive and for batch jobs.
local n = #KEYS
local room = {i = tonumber(ARGV[n + 1]), b = tonumber(ARGV[n + 2])}
local out = {}
for k = 1, n do
  local p = ARGV[k]
  local ids = {}
  if room[p] > 0 then
    ids = redis.call('LPOP', KEYS[k], room[p]) or {}
  end
  room[p] = room[p] - #ids
  if p ~= 'b' then room.b = room.b - #ids end
  out[k] = ids
end
return {out, room.i, room.b}
"""


@functools.cache
def _pop_script(conn: redis.Redis) -> Script:
    """The pop, registered once per connection (its SHA computed once), not on every pass."""
    return conn.register_script(_POP_WITH_ROOM)


def pop_waiting(
    conn: redis.Redis, queues: list[Queue], room: dict[Priority, int], priority_of: dict[str, Priority], serializer=None
) -> list[tuple[Job, Queue]]:
    """Waiting jobs, in queue order, as many of each priority as `room` allows: every queue
    popped in one step (a Lua script: one round trip, where an LPOP per queue took one each),
    one read for all the jobs (ids whose job is gone are skipped, as rq skips them). Every job
    taken fills a slot batch work could have had."""
    tags = ["b" if priority_of[q.name] is Priority.BATCH else "i" for q in queues]
    interactive = room.get(Priority.INTERACTIVE, 0)
    batch = room.get(Priority.BATCH, 0)
    if not queues or max(interactive, batch) <= 0:
        return []
    answer = _pop_script(conn)(keys=[q.key for q in queues], args=[*tags, interactive, batch])
    answers, room[Priority.INTERACTIVE], room[Priority.BATCH] = cast("tuple[list[list[bytes]], int, int]", answer)
    popped = [(i.decode(), queue) for queue, ids in zip(queues, answers, strict=True) for i in ids]
    if not popped:
        return []
    jobs = Job.fetch_many([i for i, _ in popped], connection=conn, serializer=serializer)
    return [(job, queue) for job, (_, queue) in zip(jobs, popped, strict=True) if job is not None]


def start_all(
    worker: BaseWorker, jobs: list[tuple[Job, Queue]], keys: Keys, ttl: int, intermediate: Job | None = None
) -> list[Started]:
    """rq's start bookkeeping for every job, its cancel flag read and its prefixes published,
    in one round trip. `intermediate`: the job rq's single-queue dequeue parked in its
    intermediate list (removed there, as `prepare_job_execution` would)."""
    started: list[Started] = []
    cancel_at: list[int] = []
    with worker.connection.pipeline() as pipe:
        worker.heartbeat(ttl, pipeline=pipe)
        worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        for job, queue in jobs:
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
            worker.executions[execution.id] = execution
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(worker.name, pipeline=pipe)
            pipe.persist(job.key)
            if job is intermediate:
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            cancel_at.append(len(pipe.command_stack))
            pipe.exists(keys.cancel(job.id))
            for key, value, expiry in held_prefix_sets(keys, job, worker.name):
                pipe.set(key, value, ex=expiry)
            started.append(Started(job, queue, execution, cancelled=False))
        results = pipe.execute()
    # execute() answers one result per queued command (MULTI/EXEC are not among them).
    for entry, at in zip(started, cancel_at, strict=True):
        entry.cancelled = bool(results[at])
    return started
