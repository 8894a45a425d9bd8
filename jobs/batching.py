"""The batching rq worker: many jobs at once in one engine that one thread owns.

rq has no concurrent worker, so this module builds one from rq's own parts:

- the **admission loop** is rq's work loop (`BatchingWorker.work`). Its dequeue waits for a
  free slot instead of a finished job, and `execute_job` does what rq does before running a
  job (`prepare_execution` puts it in the started registry, `prepare_job_execution` marks
  it `started`), calls the job function, which only validates the payload and returns the
  engine's request, and hands that to the engine thread;
- the **engine thread** (`EngineLoop`, the pattern of mlx-lm's server) owns the model: each
  step it takes newly admitted jobs into the running batch, advances every job by one step,
  and writes all their stream entries in one pipelined round trip (jobs/steps.py) that also
  reads their cancel flags;
- a **recorder thread** writes each ended job's outcome to rq with rq's own finalizers
  (`finished` with its result, `failed` with the reason, or `canceled`), off the engine's
  path, so a job ending costs the others no Redis round trips.

Priorities: interactive jobs are admitted while fewer than `capacity` interactive jobs run,
whatever batch work holds; batch jobs only fill free slots. A backlog of batch work thus
never delays a chat's first token by more than one engine step; the engine holds at most
2 x capacity sequences, and only while batch work and chat overlap.

Worker death: executions in rq's started registry expire `worker_ttl` seconds after the last
heartbeat (the same lapse after which our registry calls the worker dead), and every worker
reaps its queues' expired executions every few seconds, so jobs of a killed worker end
`failed` (or go back to their queue while they have retries left).
"""
from __future__ import annotations

import logging
import queue as stdlib_queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout, InvalidJobOperation, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now

from .keys import Keys, Priority
from .steps import StepEvent, StepSender
from .stream import EventType

log = logging.getLogger("mis.batching")

ADMIT_WAIT = 5.0
"""Seconds one blocking dequeue waits while every queue may be served (then heartbeats)."""
RESTRICTED_WAIT = 0.5
"""Seconds one dequeue of the interactive queue alone waits, so batch work is taken up
soon after a slot frees."""
REAP_INTERVAL = 5.0
"""Seconds between sweeps of this worker's started registries for dead workers' jobs."""


class JobRejected(Exception):
    """An engine cannot serve this request; `code` and the message go to the client."""

    code = "invalid_value"


class Engine(Protocol):
    """What a model engine offers the engine thread. Called from that thread only."""

    def add(self, job_id: str, request: Any) -> dict:
        """Take a job into the batch; returns the data of its `start` event. Raises
        JobRejected for a request this model cannot serve."""

    def step(self) -> tuple[list[StepEvent], dict[str, dict]]:
        """Advance every job one step: their stream events, and the result (usage) of each
        job that finished in this step (its `done` event is among the events)."""

    def remove(self, job_ids: list[str]) -> dict[str, int]:
        """Drop jobs from the batch; returns the tokens each had generated."""


@dataclass
class Admission:
    """A job between its admission and the record of its outcome."""

    job: Job
    queue: Queue
    execution: Execution
    priority: Priority
    request: Any
    deadline: float
    """time.monotonic() after which the job is stopped (rq's job timeout)."""
    refusal: BaseException | None = None
    """Why the job function refused the payload: the job ends without running."""
    cancelled: bool = False
    """Cancelled between its dequeue and its admission: the job ends without running."""


@dataclass
class Outcome:
    admission: Admission
    result: dict | None = None
    error: BaseException | None = None
    cancelled: bool = False
    tokens: int = 0


class Slots:
    """How many jobs of each priority the engine holds. The admission loop takes slots, the
    engine thread frees them."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.active = {Priority.INTERACTIVE: 0, Priority.BATCH: 0}
        self.changed = threading.Condition()

    @property
    def total(self) -> int:
        return sum(self.active.values())

    def open_priorities(self) -> list[Priority]:
        with self.changed:
            if self.total < self.capacity:
                return [Priority.INTERACTIVE, Priority.BATCH]
            if self.active[Priority.INTERACTIVE] < self.capacity:
                return [Priority.INTERACTIVE]
            return []

    def take(self, priority: Priority) -> None:
        with self.changed:
            self.active[priority] += 1

    def free(self, priority: Priority) -> None:
        with self.changed:
            self.active[priority] -= 1
            self.changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)


class EngineLoop(threading.Thread):
    """The thread that owns the model. Jobs enter through `submit`; each leaves with one
    terminal stream event and an `Outcome` passed to `on_end`."""

    def __init__(self, engine: Engine, steps: StepSender, slots: Slots,
                 on_end: Callable[[Outcome], None], on_change: Callable[[], None]):
        super().__init__(name="engine", daemon=True)
        self.engine, self.steps, self.slots = engine, steps, slots
        self.on_end, self.on_change = on_end, on_change
        self.inbox: stdlib_queue.SimpleQueue[Admission | None] = stdlib_queue.SimpleQueue()
        self.running: dict[str, Admission] = {}
        self.draining = False
        self.pending: list[StepEvent] = []
        """Events of jobs just admitted (their `start`), sent with the next step."""
        self.endings: list[Outcome] = []
        self.ending_ids: set[str] = set()
        """Jobs that have ended but whose ending is not yet written (still in `running`)."""

    def submit(self, admission: Admission) -> None:
        self.inbox.put(admission)

    def drain(self) -> None:
        """Take no new jobs; finish the running ones, then end the thread."""
        self.inbox.put(None)

    def run(self) -> None:
        while not (self.draining and not self.running):
            self._take_new(block=not self.running)
            if self.running:
                self._step()

    def abort_all(self, code: str, message: str) -> None:
        """End every running job with an error (a cold shutdown); from any thread, once the
        engine thread has stopped stepping or is about to die with the process."""
        for job_id in self._live():
            self._end(job_id, error=RuntimeError(message), code=code, message=message)
        self._write_endings()

    def _live(self) -> list[str]:
        return [j for j in self.running if j not in self.ending_ids]

    def _take_new(self, block: bool) -> None:
        while True:
            try:
                admission = self.inbox.get(block=block and not self.draining, timeout=1.0 if block else None)
            except stdlib_queue.Empty:
                return
            if admission is None:
                self.draining = True
                continue
            block = False
            job_id = admission.job.id
            self.running[job_id] = admission
            if admission.cancelled:
                self._end(job_id, cancelled=True)
                continue
            if admission.refusal is not None:
                self._end(job_id, error=admission.refusal, code="invalid_payload",
                          message="this worker cannot run the job's payload")
                continue
            try:
                start = self.engine.add(job_id, admission.request)
            except JobRejected as exc:
                self._end(job_id, error=exc, code=exc.code, message=str(exc))
                continue
            except Exception as exc:  # a bug or a model failure: the job fails, the worker lives
                log.exception("job %s could not start", job_id)
                self._end(job_id, error=exc, code="generation_failed",
                          message="the worker failed while starting this response")
                continue
            self.pending.append((job_id, EventType.START, start))
        self.on_change()

    def _step(self) -> None:
        events, self.pending = self.pending, []
        try:
            step_events, finished = self.engine.step() if self._live() else ([], {})
        except Exception as exc:  # a failed step leaves no job in a known state
            log.exception("engine step failed")
            self.engine.remove(self._live())
            for job_id in self._live():
                self._end(job_id, error=exc, code="generation_failed",
                          message="the worker failed while generating this response")
            self._write_endings()
            return
        events += step_events
        for job_id, result in finished.items():
            self._end(job_id, result=result)
        self._stop_overdue()
        cancelled = self._send(events, watch=self._live())
        self._cancel(cancelled)
        self._write_endings()

    def _stop_overdue(self) -> None:
        now_ = time.monotonic()
        overdue = [j for j in self._live() if now_ > self.running[j].deadline]
        if not overdue:
            return
        tokens = self.engine.remove(overdue)
        for job_id in overdue:
            timeout = self.running[job_id].job.timeout
            message = f"generation took longer than the job timeout ({timeout} s, JOB_TIMEOUT)"
            self._end(job_id, error=JobTimeoutException(message), code="job_timeout", message=message,
                      tokens=tokens.get(job_id, 0))

    def _cancel(self, job_ids: set[str]) -> None:
        job_ids = [j for j in self._live() if j in job_ids]
        if not job_ids:
            return
        tokens = self.engine.remove(job_ids)
        for job_id in job_ids:
            log.info("job %s cancelled", job_id)
            self._end(job_id, cancelled=True, tokens=tokens.get(job_id, 0))

    def _end(self, job_id: str, *, result: dict | None = None, error: BaseException | None = None,
             code: str = "", message: str = "", cancelled: bool = False, tokens: int = 0) -> None:
        admission = self.running[job_id]
        self.ending_ids.add(job_id)
        if error is not None:
            self.pending.append((job_id, EventType.ERROR, {"code": code, "message": message}))
        elif cancelled:
            self.pending.append((job_id, EventType.CANCELLED, {"completion_tokens": tokens}))
        if result is not None:
            tokens = result.get("completion_tokens", 0)
        self.endings.append(Outcome(admission, result=result, error=error, cancelled=cancelled, tokens=tokens))

    def _write_endings(self) -> None:
        """Put the endings' events in Redis, wait until they are there, then free the slots
        and pass the outcomes on: rq must never call a job ended before its stream says so."""
        if not self.endings:
            return
        events, self.pending = self.pending, []
        cancelled = self._send(events, self._live()) | self._flush()
        self._release_endings()
        if cancelled:
            self._cancel(cancelled)
            self._write_endings()

    def _send(self, events: list[StepEvent], watch: list[str]) -> set[str]:
        try:
            return self.steps.send(events, watch=watch)
        except redis.exceptions.RedisError as exc:
            self._lost_redis(exc)
            return set()

    def _flush(self) -> set[str]:
        try:
            return self.steps.flush()
        except redis.exceptions.RedisError as exc:
            self._lost_redis(exc)
            return set()

    def _lost_redis(self, exc: Exception) -> None:
        """Without Redis no job can reach its client: all of them end here. Their streams
        and records cannot be written either; the API has answered 503 to their clients."""
        log.error("lost Redis mid-step (%s); dropping %d running job(s)", exc, len(self.running))
        self.engine.remove(self._live())
        for job_id in self._live():
            self._end(job_id, error=exc, code="redis_unavailable", message="Redis connection lost")
        self.pending = []
        self._release_endings()

    def _release_endings(self) -> None:
        endings, self.endings = self.endings, []
        for outcome in endings:
            job_id = outcome.admission.job.id
            del self.running[job_id]
            self.ending_ids.discard(job_id)
            self.slots.free(outcome.admission.priority)
            self.on_end(outcome)
        self.on_change()


class BatchingWorker(SimpleWorker):
    """rq worker whose jobs run concurrently in an `EngineLoop` (see the module docstring).
    SimpleWorker is the base for its in-process bookkeeping; its one-job-at-a-time
    execute_job and dequeue are replaced."""

    # rq's default death penalty uses SIGALRM, which only the main thread may arm; rq
    # arms it around job callbacks, and ours run in the recorder thread.
    death_penalty_class = TimerDeathPenalty

    def __init__(self, queues: list[Queue], *, engine: EngineLoop, slots: Slots, keys: Keys,
                 execution_ttl: int, **kwargs):
        super().__init__(queues, **kwargs)
        self.engine, self.slots, self.keys = engine, slots, keys
        self.execution_ttl = execution_ttl
        self.priority_of = {q.name: p for q, p in zip(queues, (Priority.INTERACTIVE, Priority.BATCH), strict=True)}
        self.outcomes: stdlib_queue.SimpleQueue[Outcome | None] = stdlib_queue.SimpleQueue()
        self.admissions: dict[str, Admission] = {}
        self.admissions_lock = threading.Lock()
        self.recorder = threading.Thread(target=self._record_outcomes, name="recorder", daemon=True)
        self.recorder.start()
        self._last_reap = 0.0
        self._single_queue_dequeue = False

    # --- admission (main thread) ---

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        wait_after_error = 1.0
        while True:
            priorities = self.slots.open_priorities()
            if not priorities:
                self.slots.wait_for_change(1.0)
                continue
            queues = [q for q in self._ordered_queues if self.priority_of[q.name] in priorities]
            try:
                self.heartbeat()
                self._reap_abandoned()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                wait = ADMIT_WAIT if len(queues) == len(self.queues) else RESTRICTED_WAIT
                result = self.queue_class.dequeue_any(queues, wait, connection=self.connection,
                                                      job_class=self.job_class, serializer=self.serializer,
                                                      death_penalty_class=self.death_penalty_class)
                if result is not None:
                    self._single_queue_dequeue = len(queues) == 1
                    return result
            except DequeueTimeout:
                continue
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.error("Redis unreachable (%s); retrying in %.0f s", exc, wait_after_error)
                time.sleep(wait_after_error)
                wait_after_error = min(wait_after_error * 2, 30.0)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Admit the job: started in rq, then into the engine. Returns at once."""
        priority = self.priority_of[queue.name]
        execution = self.prepare_execution(job)
        # rq 3.0 (pinned): with one queue, dequeue parks the id in an intermediate list.
        self.prepare_job_execution(job, remove_from_intermediate_queue=self._single_queue_dequeue)
        job.started_at = now()
        admission = Admission(job, queue, execution, priority, request=None,
                              deadline=time.monotonic() + (job.timeout or self.queue_class.DEFAULT_TIMEOUT))
        with self.admissions_lock:
            self.admissions[job.id] = admission
        # Cancelled between its dequeue and now (the API sets the flag before it cancels):
        # the engine ends it without running it.
        admission.cancelled = bool(self.connection.exists(self.keys.cancel(job.id)))
        if not admission.cancelled:
            try:
                admission.request = job.func(*job.args, **job.kwargs)
            except Exception as exc:  # the payload failed validation
                log.warning("job %s refused: %s", job.id, exc)
                admission.refusal = exc
        self.slots.take(priority)
        self.engine.submit(admission)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # Short: the heartbeat thread refreshes running executions (refresh_executions),
        # so one that stops being refreshed belongs to a dead worker.
        return self.execution_ttl

    def refresh_executions(self) -> None:
        """Called by the heartbeat thread: keep this worker's rq records alive."""
        with self.admissions_lock:
            running = list(self.admissions.values())
        with self.connection.pipeline(transaction=False) as pipe:
            self.heartbeat(pipeline=pipe)
            for admission in running:
                admission.execution.heartbeat(admission.job.started_job_registry, self.execution_ttl, pipe)
            pipe.execute()

    def _reap_abandoned(self) -> None:
        """Fail (or requeue, if retries are left) jobs whose worker stopped heart-beating."""
        if time.monotonic() - self._last_reap < REAP_INTERVAL:
            return
        self._last_reap = time.monotonic()
        for q in self.queues:
            q.started_job_registry.cleanup()

    # --- shutdown (main thread) ---

    def _shutdown(self):
        # Always leave the admission loop at once (rq would wait for its dequeue to return
        # when busy, and might admit one more job); teardown then drains the engine.
        raise StopRequested()

    def teardown(self):
        """Warm shutdown: running jobs finish and are recorded before rq's records go.
        A second signal (a cold shutdown) ends them at once with an error."""
        self.engine.drain()
        try:
            while self.engine.is_alive():
                self.engine.join(0.2)
        except (SystemExit, KeyboardInterrupt, StopRequested):
            log.warning("cold shutdown: ending %d running job(s)", len(self.engine.running))
            self.engine.abort_all("worker_shutdown", "the worker was shut down; please retry")
        self.outcomes.put(None)
        self.recorder.join(10)
        super().teardown()

    # --- outcomes (recorder thread) ---

    def _record_outcomes(self) -> None:
        while (outcome := self.outcomes.get()) is not None:
            try:
                self._record(outcome)
            except Exception:  # Redis gone, or rq's record refused: the job's TTLs clean up
                log.exception("could not record the outcome of job %s", outcome.admission.job.id)
            finally:
                with self.admissions_lock:
                    self.admissions.pop(outcome.admission.job.id, None)
                    idle = not self.admissions
                if idle:
                    self._set_idle()

    def _record(self, outcome: Outcome) -> None:
        admission = outcome.admission
        job, queue, execution = admission.job, admission.queue, admission.execution
        if outcome.cancelled:
            job.ended_at = now()
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
            try:
                job.cancel()
            except InvalidJobOperation:
                pass  # the API marked it canceled already
        elif outcome.error is not None:
            exc = outcome.error
            self._finalize_failure(job, queue, execution, (type(exc), exc, exc.__traceback__))
        else:
            self._finalize_success(job, queue, execution, outcome.result)

    def _set_idle(self) -> None:
        try:
            self.set_state("idle")
        except redis.exceptions.RedisError:
            pass
