"""A worker's registry entry: one writer (`WorkerStatus`) and the thread that publishes it.

Three threads change what the entry says — the admission loop (load, stop), the engine
thread (jobs taken and ended) and the heartbeat itself (stops it decides) — so every change
goes through one `WorkerStatus` method, under its lock, and the heartbeat publishes a
snapshot taken under the same lock. The state's lifecycle:

    loading ⇄ error          (a failed load is retried with back-off)
    loading → idle ⇄ busy    (the model serves; busy while any job runs)
    any     → stopping       (an unload, an idle keep-alive, the manager gone, SIGTERM) — final

The heartbeat also decides the stops a worker makes itself (contract.commands.request_unload,
the keep-alive, a manager that died) and keeps rq's records of the running executions alive.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import redis

from contract import registry
from contract.commands import read_unload
from contract.context import Context
from contract.queues import request_cancel
from contract.registry import WorkerInfo, WorkerState

if TYPE_CHECKING:
    from runtime.batching import BatchingWorker

log = logging.getLogger("mis.worker")

RATE_WINDOW = 30.0
"""Seconds of heartbeats the registry's tokens_per_s and jobs_per_min are averaged over."""


class WorkerStatus:
    """The one writer of a worker's `WorkerInfo`: state, load and counters change only here."""

    def __init__(self, info: WorkerInfo):
        self._info = info
        self.lock = threading.Lock()
        self.idle_since = time.time()
        """Reset when the model is ready; with last_job_at, what the keep-alive counts from."""
        self._samples: deque[tuple[float, int, int]] = deque()

    # --- transitions ---

    def loading(self) -> None:
        self._set(WorkerState.LOADING)

    def load_failed(self, reason: str) -> None:
        self._set(WorkerState.ERROR, error=reason)

    def serving(self, context_length: int) -> None:
        """The model is loaded (or rq's loop was restarted): idle, no jobs."""
        with self.lock:
            self._info.context_length = context_length
            self._info.active_jobs = 0
            self.idle_since = time.time()
        self._set(WorkerState.IDLE)

    def jobs_running(self, count: int) -> None:
        """The engine holds `count` jobs now (the engine thread, after each change)."""
        with self.lock:
            self._info.active_jobs = count
        self._set(WorkerState.BUSY if count else WorkerState.IDLE)

    def job_ended(self, tokens: int) -> None:
        with self.lock:
            self._info.jobs_done += 1
            self._info.tokens_generated += tokens
            self._info.last_job_at = time.time()

    def stopping(self) -> bool:
        """Enter the final state; False when the worker was stopping already."""
        with self.lock:
            if self._info.state == WorkerState.STOPPING:
                return False
            self._info.state = WorkerState.STOPPING
            return True

    def renamed(self, name: str) -> str:
        """A fresh rq loop runs under a new name; returns the old one."""
        with self.lock:
            old, self._info.name = self._info.name, name
            return old

    def _set(self, state: WorkerState, error: str = "") -> None:
        with self.lock:
            if self._info.state == WorkerState.STOPPING:
                return  # final: a job ending during the drain does not make the worker idle
            self._info.state = state
            self._info.error = error

    # --- reading ---

    def snapshot(self) -> WorkerInfo:
        with self.lock:
            return self._info.model_copy()

    def sample_rates(self, step_s: float = 0.0, memory: dict | None = None) -> WorkerInfo:
        """Update the rates, memory and step time from this beat; return the entry to publish."""
        with self.lock:
            info, now_ = self._info, time.time()
            info.step_s = round(step_s, 2)
            info.memory = memory or {}
            self._samples.append((now_, info.jobs_done, info.tokens_generated))
            while now_ - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            then, jobs, tokens = self._samples[0]
            if now_ - then > 0:
                info.tokens_per_s = round((info.tokens_generated - tokens) / (now_ - then), 2)
                info.jobs_per_min = round((info.jobs_done - jobs) * 60 / (now_ - then), 2)
            info.rss_bytes = rss_bytes()
            return info.model_copy()


class Heartbeat(threading.Thread):
    """Publishes the registry entry every `interval` seconds until stopped."""

    def __init__(self, ctx: Context, status: WorkerStatus):
        super().__init__(name="heartbeat", daemon=True)
        self.ctx, self.status = ctx, status
        self.stopped = threading.Event()
        self.woken = threading.Event()
        self.rq_worker: BatchingWorker | None = None
        self.cancel_running = False
        self.parent = os.getppid()
        self.orphan_signalled = False

    def beat(self) -> None:
        self._check_orphaned()
        try:
            worker = self.rq_worker
            step_s = worker.engine.model_busy_for() if worker is not None else 0.0
            status_of = getattr(worker.engine.engine, "memory_status", None) if worker is not None else None
            memory = status_of() if status_of is not None else None
            registry.publish(
                self.ctx.conn, self.ctx.keys, self.status.sample_rates(step_s, memory), self.ctx.settings.worker_ttl
            )
            if worker is not None:
                worker.refresh_executions()
                self._check_stop(worker)
        except redis.exceptions.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _check_stop(self, worker: BatchingWorker) -> None:
        if self.status.snapshot().state != WorkerState.STOPPING:
            reason = self._stop_reason()
            if reason is None:
                return
            log.info("stopping: %s", reason)
            self.status.stopping()
            worker.stop_soon()
        if self.cancel_running:  # every beat: a job admitted just before the stop too
            with worker.admissions_lock:
                running = list(worker.admissions)
            for job_id in running:
                request_cancel(self.ctx, job_id)

    def _stop_reason(self) -> str | None:
        info = self.status.snapshot()
        unload = read_unload(self.ctx.conn, self.ctx.keys, info.model)
        if unload is not None and info.started_at < unload.before:
            self.cancel_running = unload.cancel
            return "unload requested" + (" (cancelling running jobs)" if unload.cancel else "")
        idle_for = time.time() - max(self.status.idle_since, info.last_job_at)
        if info.keep_alive >= 0 and info.active_jobs == 0 and idle_for > info.keep_alive:
            return f"idle for {idle_for:.0f} s (keep-alive {info.keep_alive} s)"
        if info.manager and os.getppid() != self.parent:
            return "the manager that started this worker is gone"
        return None

    def _check_orphaned(self) -> None:
        """A worker its manager started stops when the manager is gone, even while Redis is
        unreachable (the check in _stop_reason needs Redis): a SIGTERM to itself takes the
        usual warm-shutdown path. On Linux the kernel sends it already (managers.manager.
        die_with_parent); this covers other systems and workers started before that."""
        if self.orphan_signalled or not self.status.snapshot().manager or os.getppid() == self.parent:
            return
        log.warning("the manager that started this worker is gone; stopping")
        self.orphan_signalled = True
        os.kill(os.getpid(), signal.SIGTERM)

    def poke(self) -> None:
        """Publish soon, from this thread: a state change must not cost a job a round trip."""
        self.woken.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.woken.wait(self.ctx.settings.heartbeat_interval)
            self.woken.clear()
            if not self.stopped.is_set():
                self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.woken.set()


def rss_bytes() -> int:
    """This process's resident memory: /proc on Linux, else the peak from getrusage (bytes on
    macOS), which is what a manager's memory budget cares about anyway."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
