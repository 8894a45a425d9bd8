"""The engine thread of a batching worker, and what it shares with the admission loop.

`EngineLoop` owns the model (the pattern of mlx-lm's server): each step it takes newly
admitted jobs into the running batch, advances every job by one step through the `Engine`
(worker_text.engine.TextEngine for text), and writes all their stream entries in one
pipelined round trip (runtime/steps.py) that also reads their cancel flags. Every job leaves
with exactly one terminal stream event and an `Outcome` for rq (runtime/batching.py).
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
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import JobTimeoutException

from contract.keys import Priority
from contract.payloads import Usage
from contract.stream import EventType
from runtime.rejections import RequestRejected
from runtime.slots import Slots
from runtime.steps import StepEvent, StepSender

log = logging.getLogger("mis.engine")

BEHIND_AFTER = 1.0
"""Seconds of one step, with admissions waiting, after which the worker stops admitting."""
SLOW_STEP = 0.05
"""Seconds after which a step counts as slow (a prefill chunk): the cancel flags its write
read are acted on before the next step rather than after it."""


class Engine(Protocol):
    """What a model engine offers the engine thread. Called from that thread only."""

    context_length: int
    """Tokens the model can attend to (prompt + completion); published in the registry."""

    def add(self, job_id: str, request: Any) -> dict:
        """Take a job into the batch; returns the data of its `start` event. Raises
        RequestRejected for a request this model cannot serve. A job that only counts its
        prompt (`ChatJob.count_only`) is encoded but not taken in: its data says
        `count_only: true`, and the loop ends it at once."""

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


class EngineLoop(threading.Thread):
    """The thread that owns the model. Jobs enter through `submit`; each leaves with one
    terminal stream event and an `Outcome` passed to `on_end`."""

    def __init__(
        self,
        engine: Engine,
        steps: StepSender,
        slots: Slots,
        on_end: Callable[[Outcome], None],
        on_change: Callable[[], None],
        gather_s: float = 0.0,
    ):
        super().__init__(name="engine", daemon=True)
        self.engine, self.steps, self.slots = engine, steps, slots
        self.gather_s = gather_s
        """BURST_GATHER_MS: how long an idle engine handed a burst waits for more of it."""
        self.on_end, self.on_change = on_end, on_change
        self.inbox: stdlib_queue.SimpleQueue[Admission | list[Admission] | None] = stdlib_queue.SimpleQueue()
        self.running: dict[str, Admission] = {}
        self.draining = False
        self.pending: list[StepEvent] = []
        """Events of jobs just admitted (their `start`), sent with the next step."""
        self.endings: list[Outcome] = []
        self.ending_ids: set[str] = set()
        """Jobs that have ended but whose ending is not yet written (still in `running`)."""
        steps.kept_for = self._kept_for
        self.last_step_s = 0.0
        self.model_busy_since = 0.0
        """time.monotonic() when the current call into the engine (a step, an admission)
        began; 0 between calls. The heartbeat shows how long it has run."""

    def _kept_for(self, job_id: str) -> int:
        """How long a job's stream outlives it: as long as rq keeps its record (failure_ttl
        when rq keeps no record of a success, contract.queues.JobSpec.record_success)."""
        admission = self.running.get(job_id)
        if admission is None:
            return self.steps.settings.result_ttl
        kept = [t for t in (admission.job.result_ttl, admission.job.failure_ttl) if isinstance(t, int) and t > 0]
        return max(kept, default=self.steps.settings.result_ttl)

    def submit(self, admission: Admission) -> None:
        self.inbox.put(admission)

    def submit_many(self, admissions: list[Admission]) -> None:
        self.inbox.put(admissions)  # one item: taken in one step, a burst prefilled together

    def behind(self) -> bool:
        """Jobs wait here — in the inbox behind a step past BEHIND_AFTER (a long prefill), or in
        the engine for memory (`holding`) — so more would too, where no other worker can take
        them. A burst during fast steps is not being behind: it joins the next step."""
        if getattr(self.engine, "holding", False):
            return True
        return self.inbox.qsize() > 0 and self.model_busy_for() > BEHIND_AFTER

    def model_busy_for(self) -> float:
        since = self.model_busy_since
        return time.monotonic() - since if since else 0.0

    def drain(self) -> None:
        """Take no new jobs; finish the running ones, then end the thread."""
        self.inbox.put(None)

    def run(self) -> None:
        while not (self.draining and not self.running):
            try:
                self._take_new(block=not self.running)
                if self.running:
                    self._step()
            except Exception:  # a bug here must not leave clients waiting on a dead thread
                log.exception("engine loop failed; ending its running jobs")
                self.abort_all("generation_failed", "the worker failed while generating this response")

    def abort_all(self, code: str, message: str) -> None:
        """End every running job with an error (a cold shutdown); from any thread, once the
        engine thread has stopped stepping or is about to die with the process."""
        live = self._live()
        try:
            self.engine.remove(live)
        except Exception:  # the engine is beyond help; the jobs still get their endings
            log.exception("engine could not drop its jobs")
        for job_id in live:
            self._end(job_id, error=RuntimeError(message), code=code, message=message)
        self._write_endings()

    def _live(self) -> list[str]:
        return [j for j in self.running if j not in self.ending_ids]

    def _take_new(self, block: bool) -> None:
        """Take every admission waiting in the inbox (waiting for the first one while idle).
        An idle engine handed a burst (one pass of several jobs) waits `gather_s` for the rest
        of it, which may reach it in further admission passes: prefilled apart, the first
        group's first tokens would wait for the second group's prefill step."""
        taken, idle, until = False, not self.running, 0.0
        while True:
            wait, timeout = block and not self.draining, 1.0 if block else None
            if until:
                wait, timeout = True, max(0.0, until - time.monotonic())
            try:
                admission = self.inbox.get(block=wait, timeout=timeout)
            except stdlib_queue.Empty:
                break
            if admission is None:
                self.draining = True
                continue
            if idle and not until and self.gather_s > 0 and isinstance(admission, list) and len(admission) > 1:
                until = time.monotonic() + self.gather_s
            block, taken = False, True
            for one in admission if isinstance(admission, list) else [admission]:
                self._admit(one)
        if taken:  # the registry shows the jobs now running (it once stayed `idle`, 0 jobs)
            self.on_change()

    def _admit(self, admission: Admission) -> None:
        job_id = admission.job.id
        self.running[job_id] = admission
        if admission.cancelled:
            self._end(job_id, cancelled=True)
            return
        if admission.refusal is not None:
            self._refuse(job_id, admission.refusal)
            return
        try:
            self.model_busy_since = time.monotonic()
            start = self.engine.add(job_id, admission.request)
        except RequestRejected as exc:
            self._end(job_id, error=exc, code=exc.code, message=str(exc), param=exc.param)
            return
        except Exception as exc:  # a bug or a model failure: the job fails, the worker lives
            log.exception("job %s could not start", job_id)
            self._end(
                job_id, error=exc, code="generation_failed", message="the worker failed while starting this response"
            )
            return
        finally:
            self.model_busy_since = 0.0
        counted = start.pop("count_only", False)
        self.pending.append((job_id, EventType.START, {**start, **_described(admission.job)}))
        if counted:  # the engine holds nothing of it: it ends now, its `done` the prompt's size
            tokens = start["prompt_tokens"]
            result = Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens).model_dump(exclude_none=True)
            self.pending.append((job_id, EventType.DONE, {"finish_reason": "stop", "usage": result}))
            self._end(job_id, result=result)

    def _refuse(self, job_id: str, refusal: BaseException) -> None:
        """The job function refused the payload. A refusal with a `code` (an expired image,
        say) tells the client what happened; anything else is a server-side mismatch."""
        code = getattr(refusal, "code", None)
        if code:
            self._end(job_id, error=refusal, code=code, message=str(refusal), param=getattr(refusal, "param", ""))
        else:
            self._end(job_id, error=refusal, code="invalid_payload", message="this worker cannot run the job's payload")

    def _step(self) -> None:
        if self.last_step_s > SLOW_STEP:
            # The cancel flags read after the last step have long arrived: act on them now,
            # not after one more step (a prefill chunk on a CPU takes seconds).
            self._cancel(self._poll())
        events, self.pending = self.pending, []
        try:
            self.model_busy_since = time.monotonic()
            step_events, finished = self.engine.step() if self._live() else ([], {})
        except Exception as exc:  # a failed step leaves no job in a known state
            log.exception("engine step failed")
            self.engine.remove(self._live())
            for job_id in self._live():
                self._end(
                    job_id,
                    error=exc,
                    code="generation_failed",
                    message="the worker failed while generating this response",
                )
            self._write_endings()
            return
        finally:
            self.last_step_s = time.monotonic() - self.model_busy_since
            self.model_busy_since = 0.0
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
            self._end(
                job_id,
                error=JobTimeoutException(message),
                code="job_timeout",
                message=message,
                tokens=tokens.get(job_id, 0),
            )

    def _cancel(self, flagged: set[str]) -> None:
        job_ids = [j for j in self._live() if j in flagged]
        if not job_ids:
            return
        tokens = self.engine.remove(job_ids)
        for job_id in job_ids:
            log.info("job %s cancelled", job_id)
            self._end(job_id, cancelled=True, tokens=tokens.get(job_id, 0))

    def _end(
        self,
        job_id: str,
        *,
        result: dict | None = None,
        error: BaseException | None = None,
        code: str = "",
        message: str = "",
        param: str = "",
        cancelled: bool = False,
        tokens: int = 0,
    ) -> None:
        admission = self.running[job_id]
        self.ending_ids.add(job_id)
        if error is not None:
            ending = {"code": code, "message": message, **({"param": param} if param else {})}
            self.pending.append((job_id, EventType.ERROR, ending))
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
        return self._talk(lambda: self.steps.send(events, watch=watch))

    def _poll(self) -> set[str]:
        return self._talk(self.steps.poll)

    def _flush(self) -> set[str]:
        return self._talk(self.steps.flush)

    def _talk(self, call: Callable[[], set[str]]) -> set[str]:
        """One exchange with Redis through the step sender: the cancel flags it read, or
        none when Redis is gone (then every job ends, `_lost_redis`)."""
        try:
            return call()
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


def _described(job: Job) -> dict:
    """What a stream's `start` says of its request, so that a finished answer can be read
    back from the stream alone once rq has dropped the job (api/stored.py)."""
    payload = job.kwargs.get("payload", {}) if isinstance(job.kwargs, dict) else {}
    return {
        "created": int(job.created_at.timestamp()) if job.created_at else 0,
        "model": payload.get("model", ""),
        "logprobs": bool(payload.get("logprobs")),
    }
