"""The contract's own rules against a real Redis, without workers: the one way to enqueue
(lifetimes by priority, retries, fan-ins, the interactive depth limit), the one cancel
helper, queue names both ways, and the one rule for jobs rq ended without a stream ending."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from contract.context import Context
from contract.keys import Kind, Priority, parse_queue_name, queue_name
from contract.payloads import ChatJob, ChatMessage
from contract.queues import JobSpec, QueueFull, cancel_job, enqueue, enqueue_many, fail_waiting
from contract.results import ResultStatus, ending_without_event, read_result
from contract.settings import Settings
from contract.stream import EventType, StreamReader, StreamWriter


@pytest.fixture()
def small(redis_server, conn) -> Context:
    """A context whose limits are small and whose lifetimes are told apart."""
    return Context.of(
        conn,
        Settings(
            redis_url=redis_server.url,
            key_prefix="contract:",
            queued_ttl=111,
            batch_queued_ttl=2222,
            result_ttl=3333,
            job_timeout=44,
            queue_depth_limits={"contract-model": 2},
        ),
    )


def chat(model="contract-model") -> ChatJob:
    return ChatJob(model=model, messages=[ChatMessage(role="user", content="hi")], max_tokens=3)


def test_lifetimes_follow_the_priority(small):
    interactive = enqueue(small, JobSpec.chat(chat("m-interactive"), Kind.TEXT))
    batch = enqueue(small, JobSpec.chat(chat("m-batch"), Kind.VISION, priority=Priority.BATCH, retries=2))
    assert interactive.origin == "text:m-interactive:interactive" and batch.origin == "vision:m-batch:batch"
    assert (interactive.ttl, interactive.timeout, interactive.result_ttl) == (111, 44, 3333)
    assert (batch.ttl, batch.failure_ttl, batch.retries_left) == (2222, 3333, 2)
    assert interactive.func_name == "worker_text.jobs.chat" and batch.func_name == "worker_vision.jobs.chat"
    assert interactive.kwargs["payload"]["messages"][0]["content"] == "hi"


def test_only_interactive_queues_are_bounded(small):
    for _ in range(2):
        enqueue(small, JobSpec.chat(chat(), Kind.TEXT))
    refused = JobSpec.chat(chat(), Kind.TEXT)
    with pytest.raises(QueueFull) as full:
        enqueue(small, refused)
    assert full.value.depth == 2
    # Read and enqueued in one transaction, then taken back out: nothing of it is left.
    assert Queue(refused.queue, connection=small.conn).count == 2
    assert not small.conn.exists(f"rq:job:{refused.job_id}")
    specs = [JobSpec.chat(chat(), Kind.TEXT, priority=Priority.BATCH) for _ in range(3)]
    assert [j.id for j in enqueue_many(small, specs)] == [s.job_id for s in specs]


def test_a_fan_in_waits_for_its_jobs_failed_or_not(small):
    pages = enqueue_many(small, [JobSpec.chat(chat("m-fan"), Kind.TEXT, priority=Priority.BATCH) for _ in range(2)])
    after = enqueue(
        small, JobSpec("work.documents.aggregate", {"id": "d"}, Kind.TEXT, "m-fan", Priority.BATCH, after=pages)
    )
    assert after.get_status() == JobStatus.DEFERRED
    assert after.allow_dependency_failures and set(after.dependency_ids) == {p.id for p in pages}


def test_cancel_takes_waiting_jobs_off_and_ends_a_chat_stream(small):
    queued = enqueue(small, JobSpec.chat(chat("m-cancel"), Kind.TEXT, priority=Priority.BATCH))
    deferred = enqueue(
        small, JobSpec("work.batches.finalize", {"id": "b"}, Kind.TEXT, "m-cancel", Priority.BATCH, after=[queued])
    )
    cancel_job(small, queued.id)
    cancel_job(small, deferred.id)
    assert queued.get_status() == JobStatus.CANCELED and deferred.get_status() == JobStatus.CANCELED
    assert [e.type for e in StreamReader(small.conn, small.keys, queued.id).read_all()] == [EventType.CANCELLED]
    assert StreamReader(small.conn, small.keys, deferred.id).read_all() == []  # no client reads one
    assert small.conn.exists(small.keys.cancel(queued.id))
    cancel_job(small, queued.id)  # twice: nothing more happens
    assert len(StreamReader(small.conn, small.keys, queued.id).read_all()) == 1


def test_queue_names_parse_back():
    for kind in Kind:
        for priority in Priority:
            assert parse_queue_name(queue_name(kind, "org/model:v1", priority)) == (kind, "org/model:v1", priority)
    assert parse_queue_name("default") is None and parse_queue_name("text::batch") is None


@pytest.mark.parametrize(
    "status, ending, result",
    [
        (JobStatus.FAILED, EventType.ERROR, ResultStatus.FAILED),
        (JobStatus.STOPPED, EventType.CANCELLED, ResultStatus.CANCELED),
        (JobStatus.CANCELED, EventType.CANCELLED, ResultStatus.CANCELED),
        (JobStatus.FINISHED, None, ResultStatus.FAILED),  # finished, yet its stream is gone: expired
        (JobStatus.STARTED, None, ResultStatus.RUNNING),
        (JobStatus.QUEUED, None, ResultStatus.QUEUED),
    ],
)
def test_one_rule_for_jobs_rq_ended_without_a_stream_ending(small, status, ending, result):
    job = Job.create("worker_text.jobs.chat", connection=small.conn, kwargs={"payload": {}})
    job.save()
    job.set_status(status)
    event = ending_without_event(Job.fetch(job.id, connection=small.conn))
    assert (event.type if event else None) == ending
    if ending == EventType.ERROR:
        assert event.data["code"] == "generation_failed"
    # The relay (api/relay.py) and stored results read the same rule.
    assert read_result(small.conn, small.keys, job.id).status == result
    assert ending_without_event(None) is None


def test_the_queue_of_a_spec_is_where_enqueue_puts_it(small):
    spec = JobSpec.chat(chat("m-where"), Kind.VISION, priority=Priority.BATCH)
    job = enqueue(small, spec)
    assert Queue(spec.queue, connection=small.conn).job_ids == [job.id]


def test_a_job_rq_failed_as_abandoned_is_a_dead_worker_whoever_noticed(small):
    """A worker's sweep may fail a dead worker's job before the relay looks: the client still
    hears that the worker died, not a generic failure."""
    job = enqueue(small, JobSpec.chat(chat("m-abandoned"), Kind.TEXT))
    queue = Queue(job.origin, connection=small.conn)
    queue.remove(job)
    job.set_status(JobStatus.STARTED)
    small.conn.zadd(queue.started_job_registry.key, {f"{job.id}:execution": 1})  # expired long ago
    queue.started_job_registry.cleanup()  # what every live worker's sweep runs
    job = Job.fetch(job.id, connection=small.conn)
    assert job.get_status() == JobStatus.FAILED
    event = ending_without_event(job)
    assert event is not None and event.data["code"] == "worker_died"
    assert read_result(small.conn, small.keys, job.id).error["code"] == "worker_died"


def test_jobs_waiting_for_a_model_that_cannot_load_end_and_their_dependents_run(small):
    """Hardening II, case 6: batch lines and document pages for a model whose load failed
    waited out BATCH_QUEUED_TTL (a day); a manager now ends them with the reason."""
    lines = enqueue_many(small, [JobSpec.chat(chat("m-dead"), Kind.TEXT, priority=Priority.BATCH, retries=2)
                                 for _ in range(2)])  # fmt: skip
    finalize = enqueue(small, JobSpec("work.batches.finalize", {"id": "b"}, Kind.TEXT, "m-dead", Priority.BATCH,
                                      after=lines))  # fmt: skip
    chat_job = enqueue(small, JobSpec.chat(chat("m-dead"), Kind.TEXT))
    ended = fail_waiting(small, Kind.TEXT, "m-dead", "model_unavailable", "loading model 'm-dead' failed: gone")
    assert set(ended) == {lines[0].id, lines[1].id, chat_job.id}  # not the deferred finalize: it runs now
    for job in (*lines, chat_job):
        result = read_result(small.conn, small.keys, job.id)
        assert result.status == ResultStatus.FAILED and result.error["code"] == "model_unavailable"
    assert finalize.get_status() == JobStatus.QUEUED  # its lines ended: the batch can finish


def test_bytes_in_an_event_travel_as_they_are(small):
    """An embedding job's vectors: a `bytes` value of the data is a stream field of its own
    (no base64, no JSON), read back as the same bytes beside the JSON part."""
    vectors = bytes(range(256)) * 64  # not text: every byte value
    writer = StreamWriter(small.conn, small.keys, "blobjob", maxlen=100, ttl=60)
    writer.write(EventType.DONE, {"count": 2, "embeddings": vectors})
    (event,) = StreamReader(small.conn, small.keys, "blobjob").read_all()
    assert event.type == EventType.DONE and event.data == {"count": 2, "embeddings": vectors}
