"""The model worker: an rq SimpleWorker that holds one loaded model for its whole life.

Why SimpleWorker: a forking worker would reload (or copy) the model for every job; jobs
here run in-process against the model loaded once at start. What rq lacks we add around it:
- a heartbeat thread that keeps our registry entry (model, kind, state, counters) fresh, so
  the API can tell live models and notice a worker that died mid-job;
- cooperative cancellation: a job function raises `JobCancelled` and the job ends `canceled`
  in rq (not failed, not finished);
- a load loop: a model that fails to load leaves the worker up in state `error`, with the
  reason in the registry and the log, retrying with back-off.
Job functions reach the loaded model through `current_context()`: rq calls them with their
payload only, and the context is set once, by `serve`, before any job runs.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import SimpleWorker
from rq.exceptions import InvalidJobOperation, StopRequested

from . import registry
from .connection import connect, wait_for_redis
from .keys import Keys, Kind, queue_names
from .registry import WorkerInfo, WorkerState
from .settings import Settings
from .steps import StepSender

log = logging.getLogger("mis.worker")

LOAD_RETRY_MIN = 5.0
"""Seconds before the first retry of a failed model load; doubles up to LOAD_RETRY_MAX."""
LOAD_RETRY_MAX = 300.0
RQ_WORKER_TTL = 35
"""rq's own worker TTL; rq blocks on the queues for TTL - 15 s between its heartbeats."""


class JobCancelled(Exception):
    """Raised by a job function that stopped because its cancel flag was set."""


@dataclass
class WorkerContext:
    """What job functions get from the worker that runs them."""

    conn: redis.Redis
    settings: Settings
    keys: Keys
    info: WorkerInfo
    engine: Any
    steps: StepSender
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_job(self, tokens: int) -> None:
        with self.lock:
            self.info.jobs_done += 1
            self.info.tokens_generated += tokens


_context: WorkerContext | None = None


def current_context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("job functions run only inside a model worker (python -m worker_text)")
    return _context


class Heartbeat(threading.Thread):
    """Publishes the registry entry every `interval` seconds until stopped."""

    def __init__(self, conn: redis.Redis, keys: Keys, info: WorkerInfo, settings: Settings):
        super().__init__(name="heartbeat", daemon=True)
        self.conn, self.keys, self.info, self.settings = conn, keys, info, settings
        self.stopped = threading.Event()
        self.woken = threading.Event()

    def beat(self) -> None:
        try:
            registry.publish(self.conn, self.keys, self.info, self.settings.worker_ttl)
        except redis.exceptions.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def poke(self) -> None:
        """Publish soon, from this thread: a state change must not cost a job a round trip."""
        self.woken.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.woken.wait(self.settings.heartbeat_interval)
            self.woken.clear()
            if not self.stopped.is_set():
                self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.woken.set()


class ModelWorker(SimpleWorker):
    """SimpleWorker that keeps the registry state true and ends cancelled jobs `canceled`."""

    heartbeat_thread: Heartbeat

    def execute_job(self, job, queue):
        self._set_model_state(WorkerState.BUSY, active_jobs=1)
        try:
            super().execute_job(job, queue)
        finally:
            self._set_model_state(WorkerState.IDLE, active_jobs=0)

    def _set_model_state(self, state: WorkerState, active_jobs: int) -> None:
        info = self.heartbeat_thread.info
        info.state, info.active_jobs = state, active_jobs
        self.heartbeat_thread.poke()

    # rq 3.0 private hook (pinned): the one place a raised job ends up.
    def _finalize_failure(self, job, queue, execution, exc_info):
        if not isinstance(exc_info[1], JobCancelled):
            return super()._finalize_failure(job, queue, execution, exc_info)
        log.info("job %s cancelled", job.id)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.execute()
        try:
            job.cancel()
        except InvalidJobOperation:
            pass  # the API marked it canceled already


def worker_name(kind: Kind) -> str:
    return f"{kind}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def serve(
    settings: Settings,
    model_id: str,
    kind: Kind,
    load: Callable[[], Any],
    capacity: int = 1,
) -> int:
    """Register, load the model (retrying on failure), then work jobs until SIGTERM/SIGINT.
    Returns the process exit code."""
    global _context
    conn = connect(settings)
    keys = Keys(settings.key_prefix)
    info = WorkerInfo(
        name=worker_name(kind), model=model_id, kind=kind, host=socket.gethostname(),
        pid=os.getpid(), capacity=capacity, started_at=time.time(),
    )
    heartbeat = Heartbeat(conn, keys, info, settings)
    heartbeat.beat()
    heartbeat.start()
    stop = threading.Event()
    try:
        engine = _load_with_retry(load, info, heartbeat, stop)
        if engine is None:
            return 0
        _context = WorkerContext(conn=conn, settings=settings, keys=keys, info=info, engine=engine,
                                 steps=StepSender(conn, keys, settings))
        info.state, info.error = WorkerState.IDLE, ""
        heartbeat.beat()
        _work_until_stopped(conn, keys, info, heartbeat, settings)
        return 0
    finally:
        heartbeat.stop()
        try:
            registry.remove(conn, keys, info.name)
        except redis.exceptions.RedisError:
            pass


def _work_until_stopped(conn, keys: Keys, info: WorkerInfo, heartbeat: Heartbeat,
                        settings: Settings) -> None:
    """Run rq's work loop until a stop signal. rq leaves its loop on errors it does not
    handle (Redis gone in the middle of a job, for one); we wait for Redis and start a fresh
    loop under a new name, so a Redis restart never takes a loaded model down with it."""
    while True:
        worker = ModelWorker(queue_names(info.kind, info.model), name=info.name, connection=conn,
                             worker_ttl=RQ_WORKER_TTL, default_result_ttl=settings.result_ttl,
                             # rq's job description embeds the whole payload (every message):
                             # formatting and logging it per job costs more than the dequeue.
                             log_job_description=False)
        worker.heartbeat_thread = heartbeat
        worker.work(logging_level="INFO")
        if worker._shutdown_requested_date is not None:  # rq 3.0 (pinned): set by SIGTERM/SIGINT
            return
        log.warning("rq's work loop ended unexpectedly; restarting it once Redis answers")
        try:
            time.sleep(1)  # never a hot loop, whatever made rq give up
            while not wait_for_redis(conn, timeout=5):
                pass
        except StopRequested:  # rq's SIGTERM handler is still installed
            return
        old_name, info.name = info.name, worker_name(info.kind)
        info.state, info.active_jobs = WorkerState.IDLE, 0
        try:
            registry.remove(conn, keys, old_name)
        except redis.exceptions.RedisError:
            pass
        heartbeat.beat()


def _load_with_retry(load, info: WorkerInfo, heartbeat: Heartbeat, stop: threading.Event):
    """Call `load` until it succeeds or a stop signal arrives (then return None)."""
    def on_signal(signum, frame):
        stop.set()
        raise KeyboardInterrupt  # interrupts a load in progress as well as the wait

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    delay = LOAD_RETRY_MIN
    try:
        while not stop.is_set():
            info.state = WorkerState.LOADING
            heartbeat.beat()
            try:
                log.info("loading model %s", info.model)
                engine = load()
                log.info("model %s loaded", info.model)
                return engine
            except KeyboardInterrupt:
                return None
            except Exception as exc:  # any load failure is reported, then retried
                info.state, info.error = WorkerState.ERROR, _safe_reason(exc)
                heartbeat.beat()
                log.error("cannot load model %s: %s; retrying in %.0f s", info.model, info.error, delay)
                try:
                    stop.wait(delay)
                except KeyboardInterrupt:
                    return None
                delay = min(delay * 2, LOAD_RETRY_MAX)
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_ABSOLUTE_PATH = re.compile(r"(?:/[\w.@+-]+){2,}/?")


def _safe_reason(exc: Exception) -> str:
    """The exception as one line for the registry, /health and 503s: server paths are cut
    down to their last part (they mean nothing to a client and say too much)."""
    text = _ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group().rstrip("/")), str(exc))
    return f"{type(exc).__name__}: {text or 'no details'}"[:500]
