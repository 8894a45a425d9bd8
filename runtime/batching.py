"""The batching rq worker: many jobs at once in one engine that one thread owns.

rq has no concurrent worker, so this module builds one from rq's own parts:

- the **admission loop** is rq's work loop (`BatchingWorker.work`). Its dequeue waits for a
  free slot instead of a finished job, and `execute_job` does what rq does before running a
  job (`prepare_execution` puts it in the started registry, `prepare_job_execution` marks
  it `started`), calls the job function, which only validates the payload and returns the
  engine's request, and hands that to the engine thread;
- the **engine thread** (`EngineLoop` in runtime/engine_loop.py) owns the model: each
  step it takes newly admitted jobs into the running batch, advances every job by one step,
  and writes all their stream entries in one pipelined round trip (runtime/steps.py) that also
  reads their cancel flags;
- a **side thread** runs what bookkeeping jobs hand back as `Later` (rendering a document's
  pages: seconds, and never in the admission loop, which a chat's admission waits for);
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
import signal
import threading
import time
from concurrent.futures import Future

import redis
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout, StopRequested
from rq.job import Job, _current_job
from rq.timeouts import TimerDeathPenalty
from rq.utils import now

from contract.done import Done, Later
from contract.keys import Keys, Priority
from contract.prefixes import requeue_orphans
from contract.queues import mark_canceled
from contract.sweep import drop_idle
from runtime.burst import Started, pop_waiting, start_all
from runtime.engine_loop import Admission, EngineLoop, Outcome
from runtime.slots import Slots

log = logging.getLogger("mis.batching")

ADMIT_WAIT = 2.0
"""Seconds one blocking dequeue waits while every queue may be served (then heartbeats, and
sees a stop the worker asked of itself: an unload or an idle keep-alive)."""
RESTRICTED_WAIT = 0.5
"""Seconds one dequeue of the interactive queue alone waits, so batch work is taken up
soon after a slot frees."""
SIDE_BACKLOG = 2
"""Side jobs (renders) held by this worker, running or waiting, past which it admits
interactive jobs only: more batch work would wait here, where no other worker can take it."""
REAP_INTERVAL = 5.0
"""Seconds between sweeps of this worker's started registries for dead workers' jobs."""


class BatchingWorker(SimpleWorker):
    """rq worker whose jobs run concurrently in an `EngineLoop` (see the module docstring).
    SimpleWorker is the base for its in-process bookkeeping; its one-job-at-a-time
    execute_job and dequeue are replaced."""

    # rq's default death penalty uses SIGALRM, which only the main thread may arm; rq
    # arms it around job callbacks, and ours run in the recorder thread.
    death_penalty_class = TimerDeathPenalty

    def __init__(
        self, queues: list[Queue], *, engine: EngineLoop, slots: Slots, keys: Keys, execution_ttl: int, **kwargs
    ):
        super().__init__(queues, **kwargs)
        self.engine, self.slots, self.keys = engine, slots, keys
        self.execution_ttl = execution_ttl
        # Its own queue (routed conversations) and the model's interactive one are interactive work.
        priorities = (Priority.INTERACTIVE, Priority.INTERACTIVE, Priority.BATCH)[-len(queues) :]
        self.priority_of = {q.name: p for q, p in zip(queues, priorities, strict=True)}
        self.outcomes: stdlib_queue.SimpleQueue[Outcome | None] = stdlib_queue.SimpleQueue()
        self.admissions: dict[str, Admission] = {}
        self.admissions_lock = threading.Lock()
        self.recorder = threading.Thread(target=self._record_outcomes, name="recorder", daemon=True)
        self.recorder.start()
        self.side_work: stdlib_queue.SimpleQueue[Admission | None] = stdlib_queue.SimpleQueue()
        self.preparing: set[Future] = set()
        """Admitted requests still being prepared: a warm shutdown waits for them."""
        self.side_held = 0
        """Side jobs taken and not yet ended (under admissions_lock)."""
        self.side = threading.Thread(target=self._run_side_work, name="side", daemon=True)
        self.side.start()
        self._last_reap = 0.0
        self._single_queue_dequeue = False
        self._born = False
        """rq's worker record exists: the heartbeat thread may refresh it (before birth it
        would create a stub that rq's register_birth takes for a live namesake)."""

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()  # rq's: its own queues' registries
        try:  # everyone's: a model nobody serves leaves no queue behind (contract/sweep.py)
            drop_idle(self.connection, self.keys)
            requeue_orphans(self.connection, self.keys)  # a dead worker's routed jobs go back
        except redis.exceptions.RedisError:
            log.warning("could not sweep idle queues", exc_info=True)

    # --- admission (main thread) ---

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        wait_after_error = 1.0
        while True:
            if self._stop_requested:
                raise StopRequested()
            if not self.engine.is_alive():
                raise RuntimeError("the engine thread has died")  # rq's loop ends; serve() restarts it
            priorities = self.slots.open_priorities()
            if self.side_held >= SIDE_BACKLOG:
                priorities = [p for p in priorities if p is Priority.INTERACTIVE]
            if not priorities or self.engine.behind():
                # No free slot, or the engine is stuck in a long step with jobs handed over:
                # further jobs wait in their queue, where other workers can take them.
                self.slots.wait_for_change(0.1 if priorities else 1.0)
                continue
            queues = [q for q in self._ordered_queues if self.priority_of[q.name] in priorities]
            try:
                self.heartbeat()
                self._reap_abandoned()
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                wait = ADMIT_WAIT if len(queues) == len(self.queues) else RESTRICTED_WAIT
                # rq annotates the timeout as int; Redis's blocking pops take fractions of a second.
                result = self.queue_class.dequeue_any(
                    queues,
                    wait,  # type: ignore[arg-type]
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
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
        """Admit the job rq dequeued and, in the same pass, the jobs waiting behind it that
        free slots have room for (runtime/burst.py): all started in rq in one round trip, then
        handed to the engine together, which prefills them together. Returns at once."""
        jobs = [(job, queue)]
        try:
            room = self._burst_room(self.priority_of[queue.name])
            jobs += pop_waiting(self.connection, self._ordered_queues, room, self.priority_of, self.serializer)
        except redis.exceptions.RedisError as exc:  # the dequeued job is admitted anyway
            log.warning("could not take waiting jobs (%s)", exc)
        intermediate = job if self._single_queue_dequeue else None
        started = start_all(self, jobs, self.keys, self.get_heartbeat_ttl(job), intermediate=intermediate)
        ready = [admission for entry in started if (admission := self._admit(entry)) is not None]
        if ready:
            self.engine.submit_many(ready)

    def _burst_room(self, first: Priority) -> dict[Priority, int]:
        """Jobs of each priority to take besides the one just dequeued: what the slots allow,
        and no batch work while renders are backed up (as the dequeue decides)."""
        room = self.slots.room(first)
        if self.side_held >= SIDE_BACKLOG:
            room[Priority.BATCH] = 0
        return room

    def _admit(self, started: Started) -> Admission | None:
        """A started job into this worker: the admission to hand the engine, or None when it
        needs none (bookkeeping done at once or beside the engine, an image still decoding)."""
        job, queue = started.job, started.queue
        priority = self.priority_of[queue.name]
        admission = Admission(
            job,
            queue,
            started.execution,
            priority,
            request=None,
            deadline=time.monotonic() + (job.timeout or self.queue_class.DEFAULT_TIMEOUT),
            # Cancelled between its dequeue and now (the API sets the flag before it cancels):
            # the engine ends it without running it.
            cancelled=started.cancelled,
        )
        with self.admissions_lock:
            self.admissions[job.id] = admission
        if not admission.cancelled:
            try:
                admission.request = self._call_job_function(job)
            except Exception as exc:  # the payload failed validation
                log.warning("job %s refused: %s", job.id, exc)
                admission.refusal = exc
            if isinstance(admission.request, Done):  # bookkeeping, done already (contract/done.py)
                self._finish_now(admission)
                return None
            if isinstance(admission.request, Later):  # bookkeeping that takes a while: beside the engine
                with self.admissions_lock:
                    self.side_held += 1
                self.side_work.put(admission)
                return None
        self.slots.take(priority)
        if isinstance(admission.request, Future):  # prepared off this loop (a vision job's images decode)
            self.preparing.add(admission.request)
            admission.request.add_done_callback(lambda done: self._prepared(admission, done))
            return None
        return admission

    def _prepared(self, admission: Admission, done: Future) -> None:
        """A request prepared beside the admission loop goes to the engine (from any thread)."""
        try:
            admission.request = done.result()
        except Exception as exc:  # an image that does not decode, say: refused like a bad payload
            log.warning("job %s refused: %s", admission.job.id, exc)
            admission.refusal = exc
        self.engine.submit(admission)
        self.preparing.discard(done)

    def _finish_now(self, admission: Admission) -> None:
        """A job that needed no engine: finished in rq (dependents enqueued) right here."""
        job = admission.job
        try:
            self._finalize_success(job, admission.queue, admission.execution, admission.request.value)
        finally:
            with self.admissions_lock:
                self.admissions.pop(job.id, None)

    def _run_side_work(self) -> None:
        """The side thread: each `Later`'s work, its outcome to the recorder like an engine job's."""
        while (admission := self.side_work.get()) is not None:
            try:
                outcome = Outcome(admission, result=admission.request.work().value)
            except Exception as exc:  # the job fails with the reason, the worker lives
                log.warning("job %s failed: %s", admission.job.id, exc)
                outcome = Outcome(admission, error=exc)
            with self.admissions_lock:
                self.side_held -= 1
            self.outcomes.put(outcome)

    @staticmethod
    def _call_job_function(job: Job):
        """The job function, with rq's `get_current_job()` answering inside it (a vision job
        reads its images from Redis through the job's connection)."""
        token = _current_job.set(job)  # rq 3.0 (pinned): what Job.perform sets
        try:
            return job.func(*job.args, **job.kwargs)
        finally:
            _current_job.reset(token)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # Short: the heartbeat thread refreshes running executions (refresh_executions),
        # so one that stops being refreshed belongs to a dead worker.
        return self.execution_ttl

    def register_birth(self):
        super().register_birth()
        self._born = True

    def register_death(self):
        self._born = False
        super().register_death()

    def refresh_executions(self) -> None:
        """Called by the heartbeat thread: keep this worker's rq records alive."""
        if not self._born:
            return
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

    def stop_soon(self) -> None:
        """A stop the worker decided itself (unload, idle keep-alive), from any thread: the
        admission loop leaves at its next turn (within ADMIT_WAIT) and the warm shutdown of
        a SIGTERM follows (teardown), so running jobs finish and are recorded."""
        if self._shutdown_requested_date is None:
            self._shutdown_requested_date = now()  # serve() reads it: stopped on purpose
            self._stopping_itself = True
        self._stop_requested = True

    def request_stop(self, signum, frame):
        """rq's SIGTERM/SIGINT handler. While the worker is already stopping on its own, the
        first signal is that same warm shutdown (a manager stopping its workers), not the
        second signal that means cold."""
        if getattr(self, "_stopping_itself", False):
            self._stopping_itself = False
            signal.signal(signal.SIGINT, self.request_force_stop)
            signal.signal(signal.SIGTERM, self.request_force_stop)
            return
        super().request_stop(signum, frame)

    def _shutdown(self):
        # Always leave the admission loop at once (rq would wait for its dequeue to return
        # when busy, and might admit one more job); teardown then drains the engine.
        raise StopRequested()

    def teardown(self):
        """Warm shutdown: running jobs finish and are recorded before rq's records go.
        A second signal (a cold shutdown) ends them at once with an error."""
        self.side_work.put(None)
        try:
            while self.preparing:  # their jobs are admitted: they reach the engine before it drains
                time.sleep(0.05)
            self.engine.drain()
            while self.engine.is_alive() or self.side.is_alive():
                self.engine.join(0.2)
                self.side.join(0.01)
        except (SystemExit, KeyboardInterrupt, StopRequested):
            log.warning("cold shutdown: ending %d running job(s)", len(self.engine.running))
            self.engine.abort_all("worker_shutdown", "the worker was shut down; please retry")
        self.outcomes.put(None)
        self.recorder.join(10)
        try:
            super().teardown()
        except redis.exceptions.RedisError as exc:
            # rq leaves its loop on a Redis error it does not handle, and its teardown writes
            # to Redis: raising here would end the worker process. Its records expire by
            # themselves; serve() starts a fresh loop once Redis answers.
            log.warning("rq's teardown could not reach Redis (%s)", exc)
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()  # it would retry forever for a loop that is gone

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
            mark_canceled(job)  # False: the API marked it canceled already
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
