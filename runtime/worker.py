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
from collections import deque
from collections.abc import Callable

import redis
from rq import Queue
from rq.exceptions import StopRequested

from contract import registry
from runtime.batching import BatchingWorker
from contract.cancel import request_cancel
from contract.commands import read_unload
from contract.connection import connect, wait_for_redis
from runtime.engine_loop import Engine, EngineLoop, Outcome, Slots
from contract.keys import Keys, Kind, queue_names
from contract.reasons import safe_reason
from contract.registry import WorkerInfo, WorkerState
from contract.settings import Settings
from runtime.steps import StepSender

log = logging.getLogger("mis.worker")

LOAD_RETRY_MIN = 5.0
"""Seconds before the first retry of a failed model load; doubles up to LOAD_RETRY_MAX."""
LOAD_RETRY_MAX = 300.0
RQ_WORKER_TTL = 35
"""rq's own worker TTL; rq blocks on the queues for TTL - 15 s between its heartbeats."""
RATE_WINDOW = 30.0
"""Seconds of heartbeats the registry's tokens_per_s and jobs_per_min are averaged over."""


class Heartbeat(threading.Thread):
    """Publishes the registry entry every `interval` seconds until stopped."""

    def __init__(self, conn: redis.Redis, keys: Keys, info: WorkerInfo, settings: Settings):
        super().__init__(name="heartbeat", daemon=True)
        self.conn, self.keys, self.info, self.settings = conn, keys, info, settings
        self.stopped = threading.Event()
        self.woken = threading.Event()
        self.rq_worker: BatchingWorker | None = None
        self.lock = threading.Lock()
        """Guards `info`'s counters, which the engine and recorder threads update."""
        self.samples: deque[tuple[float, int, int]] = deque()
        self.idle_since = time.time()
        """Reset when the model is ready; with last_job_at, what the keep-alive counts from."""
        self.stopping = False
        self.cancel_running = False
        self.parent = os.getppid()

    def beat(self) -> None:
        try:
            with self.lock:
                self._update_stats()
                registry.publish(self.conn, self.keys, self.info, self.settings.worker_ttl)
            if self.rq_worker is not None:
                self.rq_worker.refresh_executions()
                self._check_stop(self.rq_worker)
        except redis.exceptions.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _update_stats(self) -> None:
        info, now_ = self.info, time.time()
        self.samples.append((now_, info.jobs_done, info.tokens_generated))
        while now_ - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        then, jobs, tokens = self.samples[0]
        if now_ - then > 0:
            info.tokens_per_s = round((info.tokens_generated - tokens) / (now_ - then), 2)
            info.jobs_per_min = round((info.jobs_done - jobs) * 60 / (now_ - then), 2)
        info.rss_bytes = rss_bytes()

    def _check_stop(self, worker: BatchingWorker) -> None:
        if not self.stopping:
            reason = self._stop_reason()
            if reason is None:
                return
            log.info("stopping: %s", reason)
            self.stopping = True
            self.info.state = WorkerState.STOPPING
            worker.stop_soon()
        if self.cancel_running:  # every beat: a job admitted just before the stop too
            with worker.admissions_lock:
                running = list(worker.admissions)
            for job_id in running:
                request_cancel(self.conn, self.keys, job_id, self.settings.cancel_ttl)

    def _stop_reason(self) -> str | None:
        info = self.info
        unload = read_unload(self.conn, self.keys, info.model)
        if unload is not None and info.started_at < unload.before:
            self.cancel_running = unload.cancel
            return "unload requested" + (" (cancelling running jobs)" if unload.cancel else "")
        idle_for = time.time() - max(self.idle_since, info.last_job_at)
        if info.keep_alive >= 0 and info.active_jobs == 0 and idle_for > info.keep_alive:
            return f"idle for {idle_for:.0f} s (keep-alive {info.keep_alive} s)"
        if info.manager and os.getppid() != self.parent:
            return "the manager that started this worker is gone"
        return None

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
    engine (runtime.batching.Engine). Returns the exit code."""
    conn = connect(settings)
    keys = Keys(settings.key_prefix)
    info = WorkerInfo(
        name=worker_name(kind), model=model_id, kind=kind, host=socket.gethostname(),
        pid=os.getpid(), capacity=capacity, started_at=time.time(), manager=settings.manager,
        keep_alive=keep_alive,
    )
    heartbeat = Heartbeat(conn, keys, info, settings)
    heartbeat.beat()
    heartbeat.start()
    stop = threading.Event()
    try:
        engine = _load_with_retry(load, info, heartbeat, stop)
        if engine is None:
            return 0
        info.state, info.error = WorkerState.IDLE, ""
        info.context_length = getattr(engine, "context_length", 0)
        heartbeat.idle_since = time.time()
        heartbeat.beat()
        _work_until_stopped(conn, keys, heartbeat, settings, engine)
        return 0
    finally:
        heartbeat.stop()
        try:
            registry.remove(conn, keys, info.name)
        except redis.exceptions.RedisError:
            pass


def _work_until_stopped(conn, keys: Keys, heartbeat: Heartbeat, settings: Settings, engine: Engine) -> None:
    """Run the batching worker until a stop signal. rq leaves its loop on errors it does not
    handle; we wait for Redis and start a fresh loop under a new name, so a Redis restart
    never takes a loaded model down with it."""
    info = heartbeat.info
    while True:
        worker = _batching_worker(conn, keys, heartbeat, settings, engine)
        heartbeat.rq_worker = worker
        worker.work(logging_level="INFO")
        heartbeat.rq_worker = None
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


def _batching_worker(conn, keys: Keys, heartbeat: Heartbeat, settings: Settings, engine: Engine) -> BatchingWorker:
    info = heartbeat.info
    slots = Slots(info.capacity)

    def on_change() -> None:
        info.active_jobs = slots.total
        if not heartbeat.stopping:
            info.state = WorkerState.BUSY if slots.total else WorkerState.IDLE
        heartbeat.poke()

    def on_end(outcome: Outcome) -> None:
        with heartbeat.lock:
            info.jobs_done += 1
            info.tokens_generated += outcome.tokens
            info.last_job_at = time.time()
        worker.outcomes.put(outcome)

    loop = EngineLoop(engine, StepSender(conn, keys, settings), slots, on_end=on_end, on_change=on_change)
    queues = [Queue(name, connection=conn) for name in queue_names(info.kind, info.model)]
    worker = BatchingWorker(queues, engine=loop, slots=slots, keys=keys, execution_ttl=settings.worker_ttl,
                            name=info.name, connection=conn, worker_ttl=RQ_WORKER_TTL,
                            default_result_ttl=settings.result_ttl,
                            # rq's job description embeds the whole payload (every message):
                            # formatting and logging it per job costs more than the dequeue.
                            log_job_description=False)
    loop.start()
    return worker


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
                info.state, info.error = WorkerState.ERROR, safe_reason(exc)
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


def rss_bytes() -> int:
    """This process's resident memory: /proc on Linux, else the peak from getrusage (bytes on
    macOS), which is what a manager's memory budget cares about anyway."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
