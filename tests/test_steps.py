"""StepSender against a real Redis: writes land in order, replies are read one step late,
cancel flags come back, and an interrupted step never leaves a stale reply behind."""

from __future__ import annotations

from contract.queues import request_cancel
from contract.settings import Settings
from contract.stream import EventType, StreamReader
from runtime.steps import StepSender


def test_steps_land_in_order_and_cancel_flags_come_back_one_step_later(ctx, conn, keys):
    sender = StepSender(ctx)
    job = "steps-job-1"
    assert sender.send([(job, EventType.START, {"prompt_tokens": 3})], watch=[job]) == set()
    request_cancel(ctx, job)
    assert sender.send([(job, EventType.DELTA, {"text": "a"})], watch=[job]) == set()  # read before the flag
    assert sender.send([(job, EventType.DELTA, {"text": "b"})], watch=[job]) == {job}
    sender.send([(job, EventType.DONE, {"finish_reason": "stop", "usage": {}})])
    sender.flush()
    events = StreamReader(conn, keys, job).read()
    assert [e.type for e in events] == [EventType.START, EventType.DELTA, EventType.DELTA, EventType.DONE]
    assert "".join(e.data.get("text", "") for e in events) == "ab"
    assert 0 < conn.ttl(keys.stream(job)) <= Settings().result_ttl


def test_reset_drops_replies_in_flight(ctx):
    sender = StepSender(ctx)
    job = "steps-job-2"
    request_cancel(ctx, job)
    sender.send([(job, EventType.START, {})], watch=[job])
    sender.reset()  # as after an interrupted step: its replies must never be read
    assert sender.send([], watch=[]) == set()
    assert sender.send([(job, EventType.DELTA, {"text": "x"})], watch=[job]) == set()
    assert sender.flush() == {job}
