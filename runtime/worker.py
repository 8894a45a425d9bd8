"""The model worker process: loads one model, registers it, then serves its queues.

Around the batching rq worker (runtime/batching.py) this adds what rq lacks:
- a heartbeat thread that keeps our registry entry (model, kind, state, load, counters)
  fresh, so the API can tell live models and notice a worker that died mid-job, and keeps
  rq's records of the running executions alive;
- a load loop: a model that fails to load leaves the worker up in state `error`, with the
  reason in the registry and the log, retrying with back-off;
- a restart of rq's loop when Redis went away under it;
- stops the worker decides itself, in the heartbeat: an unload request for its model
  (contract.commands.request_unload), an idle keep-alive that ran out, or the manager that
  started it gone. They take the warm-shutdown path of SIGTERM and exit 0, which tells a
  manager not to restart the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
from rq import Queue
from rq.exceptions import StopRequested

from contract import registry
from contract.connection import wait_for_redis
from contract.context import Context
from contract.keys import Kind, queue_names
from contract.prefixes import direct_queue
from contract.reasons import safe_reason
from contract.registry import WorkerInfo
from contract.settings import Settings
from runtime.batching import BatchingWorker
from runtime.engine_loop import Engine, EngineLoop, Outcome
from runtime.heartbeat import Heartbeat, WorkerStatus
from runtime.slots import Slots
from runtime.steps import StepSender

log = logging.getLogger("mis.worker")

LOAD_RETRY_MIN = 5.0
"""Seconds before the first retry of a failed model load; doubles up to LOAD_RETRY_MAX."""
LOAD_RETRY_MAX = 300.0
RQ_WORKER_TTL = 35
"""rq's own worker TTL; rq blocks on the queues for TTL - 15 s between its heartbeats."""


def worker_name(kind: Kind) -> str:
    return f"{kind}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def serve(
    settings: Settings,
    model_id: str,
    kind: Kind,
    load: Callable[[], Engine],
    capacity: int,
    keep_alive: int = -1,
) -> int:
    """Register, load the model (retrying on failure), then admit jobs into its engine until
    SIGTERM/SIGINT, an unload or `keep_alive` idle seconds (-1: never). `load` returns the
    engine (runtime.engine_loop.Engine). Returns the exit code."""
    ctx = Context.connect(settings)
    status = WorkerStatus(
        WorkerInfo(
            name=worker_name(kind),
            model=model_id,
            kind=kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            capacity=capacity,
            started_at=time.time(),
            manager=settings.manager,
            keep_alive=keep_alive,
        )
    )
    heartbeat = Heartbeat(ctx, status)
    heartbeat.beat()
    heartbeat.start()
    stop = threading.Event()
    try:
        engine = _load_with_retry(load, status, heartbeat, stop)
        if engine is None:
            return 0
        status.serving(getattr(engine, "context_length", 0))
        heartbeat.beat()
        _work_until_stopped(ctx, heartbeat, engine)
        return 0
    finally:
        heartbeat.stop()
        try:
            registry.remove(ctx.conn, ctx.keys, status.snapshot().name)
        except redis.exceptions.RedisError:
            pass


def _work_until_stopped(ctx: Context, heartbeat: Heartbeat, engine: Engine) -> None:
    """Run the batching worker until a stop signal. rq leaves its loop on errors it does not
    handle; we wait for Redis and start a fresh loop under a new name, so a Redis restart
    never takes a loaded model down with it."""
    status = heartbeat.status
    while True:
        worker = _batching_worker(ctx, heartbeat, engine)
        heartbeat.rq_worker = worker
        worker.work(logging_level="INFO")
        heartbeat.rq_worker = None
        if worker._shutdown_requested_date is not None:  # rq 3.0 (pinned): set by SIGTERM/SIGINT
            return
        log.warning("rq's work loop ended unexpectedly; restarting it once Redis answers")
        try:
            time.sleep(1)  # never a hot loop, whatever made rq give up
            while not wait_for_redis(ctx.conn, timeout=5):
                pass
        except StopRequested:  # rq's SIGTERM handler is still installed
            return
        old_name = status.renamed(worker_name(status.snapshot().kind))
        status.serving(status.snapshot().context_length)
        try:
            registry.remove(ctx.conn, ctx.keys, old_name)
        except redis.exceptions.RedisError:
            pass
        heartbeat.beat()


def _batching_worker(ctx: Context, heartbeat: Heartbeat, engine: Engine) -> BatchingWorker:
    status = heartbeat.status
    info = status.snapshot()
    slots = Slots(info.capacity)

    held = [0]

    def on_change() -> None:
        # Jobs that ended are published at once (their counters, an idle worker); admissions
        # wait for the next beat (≤ HEARTBEAT_INTERVAL): a registry write racing a job's
        # first step for the GIL cost it ~0.7 ms of time to first token (bench/overhead.py).
        ended = slots.total < held[0]
        held[0] = slots.total
        status.jobs_running(slots.total)
        if ended:
            heartbeat.poke()

    def on_end(outcome: Outcome) -> None:
        status.job_ended(outcome.tokens)
        worker.outcomes.put(outcome)

    loop = EngineLoop(
        engine, StepSender(ctx), slots, on_end=on_end, on_change=on_change, gather_s=ctx.settings.burst_gather_ms / 1000
    )
    # Its own queue first (conversations routed to the prefixes it holds: contract/prefixes.py),
    # then the model's interactive and batch queues.
    names = [direct_queue(info.name), *queue_names(info.kind, info.model)]
    queues = [Queue(name, connection=ctx.conn) for name in names]
    worker = BatchingWorker(
        queues,
        engine=loop,
        slots=slots,
        keys=ctx.keys,
        execution_ttl=ctx.settings.worker_ttl,
        name=info.name,
        connection=ctx.conn,
        worker_ttl=RQ_WORKER_TTL,
        default_result_ttl=ctx.settings.result_ttl,
        # rq's job description embeds the whole payload (every message):
        # formatting and logging it per job costs more than the dequeue.
        log_job_description=False,
    )
    loop.start()
    return worker


def _load_with_retry(load, status: WorkerStatus, heartbeat: Heartbeat, stop: threading.Event):
    """Call `load` until it succeeds or a stop signal arrives (then return None)."""

    def on_signal(signum, frame):
        stop.set()
        raise KeyboardInterrupt  # interrupts a load in progress as well as the wait

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    delay = LOAD_RETRY_MIN
    model = status.snapshot().model
    try:
        while not stop.is_set():
            status.loading()
            heartbeat.beat()
            try:
                log.info("loading model %s", model)
                engine = load()
                log.info("model %s loaded", model)
                return engine
            except KeyboardInterrupt:
                return None
            except Exception as exc:  # any load failure is reported, then retried
                reason = safe_reason(exc)
                status.load_failed(reason)
                heartbeat.beat()
                log.error("cannot load model %s: %s; retrying in %.0f s", model, reason, delay)
                try:
                    stop.wait(delay)
                except KeyboardInterrupt:
                    return None
                delay = min(delay * 2, LOAD_RETRY_MAX)
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
