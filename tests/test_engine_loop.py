"""The engine loop alone: a fake engine and a fake step sender, no model, no Redis, one
thread. Admissions are submitted, the loop is told to drain, and `run()` returns once every
job has ended, so each test sees the whole life of its jobs deterministically."""

from __future__ import annotations

import time
from types import SimpleNamespace

import redis

from contract.keys import Priority
from contract.stream import EventType
from runtime.engine_loop import Admission, EngineLoop, Outcome
from runtime.rejections import PromptTooLong
from runtime.slots import Slots


class FakeEngine:
    """Each request is the number of tokens to generate ("a" each); -1 never ends."""

    context_length = 100

    def __init__(self, step_s: float = 0.0):
        self.step_s = step_s
        self.left: dict[str, int] = {}
        self.made: dict[str, int] = {}
        self.removed: list[str] = []
        self.fail_step = False

    def add(self, job_id: str, request):
        if request == "too long":
            raise PromptTooLong(200, self.context_length)
        if request == "crash":
            raise RuntimeError("boom")
        self.left[job_id], self.made[job_id] = request, 0
        return {"prompt_tokens": 3}

    def step(self):
        time.sleep(self.step_s)
        if self.fail_step:
            raise RuntimeError("step failed")
        events, finished = [], {}
        for job_id in list(self.left):
            self.made[job_id] += 1
            self.left[job_id] -= 1
            events.append((job_id, EventType.DELTA, {"text": "a"}))
            if self.left[job_id] == 0:
                del self.left[job_id]
                usage = {"completion_tokens": self.made[job_id]}
                events.append((job_id, EventType.DONE, {"finish_reason": "length", "usage": usage}))
                finished[job_id] = usage
        return events, finished

    def remove(self, job_ids):
        self.removed += job_ids
        return {j: self.made.get(j, 0) for j in job_ids if self.left.pop(j, None) is not None}


class FakeSender:
    """Records what each step writes; `cancel_after[job] = n` reports the job's flag set on
    the n-th send that watches it (one step late, like the real one); `fail_on = n` makes
    the n-th send raise as a lost Redis would."""

    def __init__(self, cancel_after: dict[str, int] | None = None, fail_on: int | None = None):
        self.in_flight: set[str] = set()
        self.sent: list[tuple] = []
        self.cancel_after = dict(cancel_after or {})
        self.watched: dict[str, int] = {}
        self.sends = 0
        self.fail_on = fail_on
        self.flushes = 0

    def send(self, events, watch=()):
        self.sends += 1
        if self.fail_on is not None and self.sends >= self.fail_on:
            raise redis.exceptions.ConnectionError("Redis went away")
        self.sent += events
        flagged = set()
        for job_id in watch:
            self.watched[job_id] = self.watched.get(job_id, 0) + 1
            if job_id in self.cancel_after and self.watched[job_id] >= self.cancel_after[job_id]:
                flagged.add(job_id)
        previous, self.in_flight = self.in_flight, flagged  # the replies arrive one send later
        return previous

    def poll(self):
        flagged, self.in_flight = self.in_flight, set()
        return flagged

    def flush(self):
        self.flushes += 1
        return self.poll()

    def events_of(self, job_id):
        return [(t, d) for j, t, d in self.sent if j == job_id]


def admission(job_id, request, *, timeout=60, priority=Priority.INTERACTIVE, **fields):
    job = SimpleNamespace(id=job_id, timeout=timeout, kwargs={"payload": {"model": "m"}}, created_at=None)
    return Admission(
        job,
        queue=None,
        execution=None,
        priority=priority,
        request=request,
        deadline=time.monotonic() + timeout,
        **fields,
    )


def run(engine, sender, admissions, capacity=8):
    """Admit, drain, run to the end; returns the outcomes by job id and the on_change count."""
    slots = Slots(capacity)
    outcomes: dict[str, Outcome] = {}
    changes = []
    loop = EngineLoop(
        engine,
        sender,
        slots,
        on_end=lambda o: outcomes.__setitem__(o.admission.job.id, o),
        on_change=lambda: changes.append(slots.total),
    )
    for a in admissions:
        slots.take(a.priority)
        loop.submit(a)
    loop.drain()
    loop.run()  # in this thread: returns when draining and nothing runs
    assert slots.total == 0, "every slot is freed"
    assert not loop.running
    return outcomes, changes


def terminal(sender, job_id):
    ends = [t for t, _ in sender.events_of(job_id) if t in (EventType.DONE, EventType.ERROR, EventType.CANCELLED)]
    assert len(ends) == 1, f"exactly one ending for {job_id}: {ends}"
    return ends[0], sender.events_of(job_id)[-1][1]


def test_admitted_jobs_start_generate_and_finish_with_their_result():
    engine, sender = FakeEngine(), FakeSender()
    outcomes, changes = run(engine, sender, [admission("a", 2), admission("b", 4)])
    assert [t for t, _ in sender.events_of("a")] == [EventType.START, EventType.DELTA, EventType.DELTA, EventType.DONE]
    assert terminal(sender, "b")[0] == EventType.DONE
    assert outcomes["a"].result == {"completion_tokens": 2} and outcomes["a"].tokens == 2
    assert outcomes["b"].error is None and not outcomes["b"].cancelled and outcomes["b"].tokens == 4
    assert sender.flushes >= 1, "endings wait for their writes before rq hears of them"
    assert changes[0] == 2 and changes[-1] == 0


def test_a_cancel_flag_removes_the_job_from_the_engine_and_ends_it_cancelled():
    engine, sender = FakeEngine(), FakeSender(cancel_after={"long": 2})
    outcomes, _ = run(engine, sender, [admission("long", -1), admission("short", 3)])
    assert "long" in engine.removed
    kind, data = terminal(sender, "long")
    assert kind == EventType.CANCELLED and data["completion_tokens"] == outcomes["long"].tokens > 0
    assert outcomes["long"].cancelled and outcomes["long"].error is None
    assert terminal(sender, "short")[0] == EventType.DONE, "its batch-mate is untouched"


def test_a_job_cancelled_before_admission_never_enters_the_engine():
    engine, sender = FakeEngine(), FakeSender()
    outcomes, _ = run(engine, sender, [admission("gone", 5, cancelled=True)])
    assert "gone" not in engine.made
    assert terminal(sender, "gone")[0] == EventType.CANCELLED and outcomes["gone"].cancelled


def test_refused_and_rejected_requests_end_with_their_error_and_the_rest_run():
    engine, sender = FakeEngine(), FakeSender()
    refused = admission("bad-payload", None, refusal=ValueError("no such field"))
    outcomes, _ = run(
        engine,
        sender,
        [refused, admission("long-prompt", "too long"), admission("crash", "crash"), admission("fine", 1)],
    )
    assert terminal(sender, "bad-payload")[1]["code"] == "invalid_payload"
    assert terminal(sender, "long-prompt")[1]["code"] == "context_length_exceeded"
    kind, data = terminal(sender, "crash")
    assert kind == EventType.ERROR and data["code"] == "generation_failed" and "boom" not in data["message"]
    assert all(outcomes[j].error is not None for j in ("bad-payload", "long-prompt", "crash"))
    assert terminal(sender, "fine")[0] == EventType.DONE


def test_an_overdue_job_is_stopped_with_job_timeout():
    engine, sender = FakeEngine(), FakeSender()
    late = admission("late", -1, timeout=0)
    outcomes, _ = run(engine, sender, [late, admission("on-time", 2)])
    kind, data = terminal(sender, "late")
    assert kind == EventType.ERROR and data["code"] == "job_timeout" and "JOB_TIMEOUT" in data["message"]
    assert "late" in engine.removed and outcomes["late"].error is not None
    assert terminal(sender, "on-time")[0] == EventType.DONE


def test_a_failed_step_ends_every_running_job_and_the_loop_goes_on():
    engine, sender = FakeEngine(), FakeSender()
    engine.fail_step = True
    outcomes, _ = run(engine, sender, [admission("x", 3), admission("y", 3)])
    for job_id in ("x", "y"):
        kind, data = terminal(sender, job_id)
        assert kind == EventType.ERROR and data["code"] == "generation_failed"
        assert outcomes[job_id].error is not None


def test_lost_redis_ends_every_running_job_without_writing():
    engine, sender = FakeEngine(), FakeSender(fail_on=2)
    outcomes, _ = run(engine, sender, [admission("p", -1), admission("q", -1)])
    assert set(outcomes) == {"p", "q"}
    for outcome in outcomes.values():
        assert isinstance(outcome.error, redis.exceptions.ConnectionError)
    assert set(engine.removed) >= {"p", "q"}


def test_batch_slots_are_freed_by_priority():
    engine, sender = FakeEngine(), FakeSender()
    outcomes, _ = run(engine, sender, [admission("chat", 1), admission("page", 2, priority=Priority.BATCH)], capacity=1)
    assert set(outcomes) == {"chat", "page"}


def test_slots_offer_interactive_work_beyond_capacity_but_batch_work_only_free_slots():
    slots = Slots(2)
    slots.take(Priority.BATCH)
    slots.take(Priority.BATCH)
    assert slots.open_priorities() == [Priority.INTERACTIVE]
    slots.take(Priority.INTERACTIVE)
    slots.take(Priority.INTERACTIVE)
    assert slots.open_priorities() == []
    slots.free(Priority.BATCH)
    assert slots.open_priorities() == []  # interactive full, and the batch holds 3 > capacity
    slots.free(Priority.INTERACTIVE)
    assert slots.open_priorities() == [Priority.INTERACTIVE]


def test_after_a_slow_step_a_cancel_is_acted_on_before_the_next_one():
    """A prefill chunk takes seconds on a CPU: the flags read after it are not left waiting
    for one more step."""
    tokens = {}
    for step_s in (0.0, 0.06):
        engine, sender = FakeEngine(step_s=step_s), FakeSender(cancel_after={"long": 2})
        outcomes, _ = run(engine, sender, [admission("long", -1)])
        assert outcomes["long"].cancelled
        tokens[step_s] = outcomes["long"].tokens
    assert tokens[0.06] == tokens[0.0] - 1  # one step sooner


def test_behind_only_when_a_long_step_holds_handed_over_jobs():
    loop = EngineLoop(FakeEngine(), FakeSender(), Slots(4), on_end=lambda o: None, on_change=lambda: None)
    assert not loop.behind()
    loop.submit(admission("waiting", 1))
    assert not loop.behind()  # between steps, or in a fast one: a burst joins the next step
    loop.model_busy_since = time.monotonic() - 2.0  # one step has run for 2 s
    assert loop.behind()
    loop.inbox.get()
    assert not loop.behind()  # nothing handed over: nothing to hold back


class StepLog(FakeEngine):
    """Records which jobs each step ran."""

    def __init__(self):
        super().__init__()
        self.steps: list[set[str]] = []

    def step(self):
        self.steps.append(set(self.left))
        return super().step()


def gathered_first_step(gather_s: float, first: list, later: list, later_after_s: float) -> tuple[set[str], float]:
    """The jobs of an idle loop's first step and how long after the first pass it began, with
    `later` handed over as a second admission pass `later_after_s` after `first`."""
    engine, slots = StepLog(), Slots(8)
    loop = EngineLoop(engine, FakeSender(), slots, on_end=lambda o: None, on_change=lambda: None, gather_s=gather_s)
    for a in first + later:
        slots.take(a.priority)
    loop.start()
    began = time.monotonic()
    loop.submit_many(first)
    if later:
        time.sleep(later_after_s)
        loop.submit_many(later)
    while not engine.steps:
        time.sleep(0.001)
    waited = time.monotonic() - began
    loop.drain()
    loop.join(5)
    return engine.steps[0], waited


def test_an_idle_engine_waits_for_the_rest_of_a_burst_when_told_to():
    def jobs(*names):
        return [admission(n, 1) for n in names]

    # Off (the default): the second pass joins a later step.
    first, _ = gathered_first_step(0.0, jobs("a", "b"), jobs("c", "d"), later_after_s=0.05)
    assert first == {"a", "b"}
    # On: the second pass, inside the window, is prefilled with the first.
    first, _ = gathered_first_step(0.3, jobs("a", "b"), jobs("c", "d"), later_after_s=0.05)
    assert first == {"a", "b", "c", "d"}
    # A lone request never waits for a burst that is not coming.
    first, waited = gathered_first_step(0.5, jobs("a"), [], later_after_s=0)
    assert first == {"a"} and waited < 0.25
