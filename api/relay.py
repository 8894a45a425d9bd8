"""Relaying a job's token stream to its HTTP client.

`JobRelay.events()` yields the job's events in order and, when the stream stays silent for
`keepalive_interval`, yields None (time for an SSE keepalive) after checking that the job
can still finish: a job that rq failed or cancelled without a stream event, a job whose
worker stopped heart-beating, or one that expired gets a synthesized terminal event, so no
client waits forever. `close()` cancels the job unless the worker ended it or the API itself
is stopping; both the JSON and the SSE path call it when they stop reading.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from rq.job import JobStatus

from contract import registry
from contract.context import Context
from contract.prefixes import DIRECT, requeue_orphans
from contract.queues import cancel_job, fetch_job, reap_orphaned_job
from contract.results import ending_without_event, worker_died
from contract.stream import Event, EventType, StreamReader, read_many

from . import autoload

log = logging.getLogger("mis.api")


class JobRelay:
    def __init__(
        self, ctx: Context, job_id: str, model: str, *, forget_when_sent: bool = False, detached: bool = False
    ):
        self.ctx, self.job_id, self.model = ctx, job_id, model
        self.forget_when_sent = forget_when_sent
        self.detached = detached
        """The job outlives this reader (a background response): a client leaving stops the
        reading, never the job."""
        self.conn, self.keys, self.settings = ctx.conn, ctx.keys, ctx.settings
        self.reader = StreamReader(ctx.conn, ctx.keys, job_id)
        self.finished = False
        """True once a terminal event has been yielded."""
        self.synthesized = False
        """True when that event came from the API's own check, not the worker: the job may
        still sit in a queue and must be cancelled."""

    def close(self, leaving: BaseException | None = None) -> None:
        """Stop the job unless its worker ended it: the client left, or the API gave up on it.
        `leaving` is the exception that ends the relay, if any. When it is the API itself
        stopping (gunicorn's graceful timeout kills the request with GreenletExit, a worker
        exits with SystemExit), the job runs on: its result stays fetchable
        (`GET /v1/chat/completions/<id>`, api/stored.py). A client leaving is GeneratorExit."""
        if self.finished and not self.synthesized:
            return
        if self.detached and not self.synthesized:
            return
        if leaving is not None and not isinstance(leaving, (Exception, GeneratorExit)):
            log.info("leaving job %s to finish: the API is stopping (%s)", self.job_id, type(leaving).__name__)
            return
        log.info("cancelling job %s (its client is gone or it can no longer finish)", self.job_id)
        try:
            cancel_job(self.ctx, self.job_id)
        except redis.exceptions.RedisError:  # Redis is gone too; the job's TTLs clean up
            log.warning("could not cancel job %s", self.job_id, exc_info=True)

    def sent(self) -> None:
        """The client has been sent the whole answer. An unstored one's stream is deleted
        now (the job ended: its terminal event was read), so Redis holds no copy of answers
        that were delivered — the bounded-memory half of `store` (api/stored.py)."""
        if not self.forget_when_sent or not self.finished:
            return
        try:
            self.conn.delete(self.keys.stream(self.job_id))
        except redis.exceptions.RedisError:  # it expires after UNSTORED_TTL anyway
            log.warning("could not delete the stream of job %s", self.job_id, exc_info=True)

    def events(self) -> Iterator[Event | None]:
        block_ms = int(self.settings.keepalive_interval * 1000)
        while not self.finished:
            batch = self.reader.read(block_ms)
            if not batch:
                batch = self.check_job()
                if not batch:
                    yield None
                    continue
            for event in batch:
                self.finished = event.is_terminal
                yield event
                if self.finished:
                    return

    def check_job(self) -> list[Event]:
        """Called after a silent interval: a terminal event if the job can no longer finish."""
        job = fetch_job(self.conn, self.job_id)
        problem: Event | None
        if job is None:
            problem = Event(
                EventType.ERROR, data={"code": "job_expired", "message": "the job expired before it finished"}
            )
        else:
            problem = self._problem(job)
        if problem is None:
            return []
        # The worker may have written its own ending between our read and the check.
        written = self.reader.read()
        if written:
            return written
        self.synthesized = True
        return [problem]

    def _problem(self, job) -> Event | None:
        ended = ending_without_event(job)
        if ended is not None:
            return ended
        status = job.get_status(refresh=False)
        if (
            status == JobStatus.STARTED
            and job.worker_name
            and not registry.is_alive(self.conn, self.keys, job.worker_name)
        ):
            reap_orphaned_job(self.conn, job)
            return worker_died()
        if status == JobStatus.QUEUED and (job.origin or "").startswith(DIRECT):
            # Routed to the worker holding its prefix, which died before taking it: back to the
            # model's shared queue (contract/prefixes.py); a live worker's queue is left alone.
            requeue_orphans(self.conn, self.keys, [job.origin])
            return None
        if status == JobStatus.QUEUED and not self._model_has_workers():
            loading, failure = autoload.state(self.conn, self.keys, self.model)
            if loading:
                return None  # a manager is loading the model for this job
            message = (
                f"loading model {self.model!r} failed: {failure}"
                if failure
                else f"no worker serves model {self.model!r} any more; please retry"
            )
            return Event(EventType.ERROR, data={"code": "model_unavailable", "message": message})
        return None

    def _model_has_workers(self) -> bool:
        """Any live worker for the model, serving or still loading (a restart counts)."""
        return any(
            w.model == self.model and w.state != registry.WorkerState.ERROR
            for w in registry.live_workers(self.conn, self.keys)
        )


class FanIn:
    """The jobs of one request with `n` > 1 choices, read as one: each job's events with its
    index (its choice), every stream in one XREAD; None when all stayed silent for a
    keepalive interval (after the same checks a single relay makes)."""

    def __init__(self, relays: list[JobRelay]):
        self.relays = relays

    @property
    def finished(self) -> bool:
        return all(r.finished for r in self.relays)

    def events(self) -> Iterator[tuple[int, Event] | None]:
        first = self.relays[0]
        block_ms = int(first.settings.keepalive_interval * 1000)
        while not self.finished:
            live = [(i, r) for i, r in enumerate(self.relays) if not r.finished]
            batches = read_many(first.conn, [r.reader for _, r in live], block_ms)
            if not any(batches):
                batches = [r.check_job() for _, r in live]
                if not any(batches):
                    yield None
                    continue
            for (index, relay), batch in zip(live, batches, strict=True):
                for event in batch:
                    relay.finished = event.is_terminal
                    yield index, event
                    if relay.finished:
                        break

    def close(self, leaving: BaseException | None = None) -> None:
        for relay in self.relays:
            relay.close(leaving)

    def sent(self) -> None:
        for relay in self.relays:
            relay.sent()
