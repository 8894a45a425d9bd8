"""Burst admission (runtime/burst.py): jobs waiting behind a dequeued one are taken in the same
pass, started in rq in one round trip and prefilled together."""

from __future__ import annotations

from rq import Queue
from rq.job import Job

from contract.keys import Kind, Priority, queue_names
from contract.payloads import ChatJob, ChatMessage, SamplingParams
from contract.queues import Context, JobSpec, enqueue
from contract.settings import Settings
from runtime.burst import pop_waiting, start_all

from .support import alias, wait_until


def chat(model: str, text: str = "hello", max_tokens: int = 4) -> ChatJob:
    return ChatJob(
        model=model,
        messages=[ChatMessage(role="user", content=text)],
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0),
    )


def test_pop_waiting_takes_what_the_slots_have_room_for(conn, keys):
    settings = Settings(key_prefix=keys.prefix)
    ctx = Context.of(conn, settings)
    model = "burst-pop"
    interactive = [enqueue(ctx, JobSpec.chat(chat(model), Kind.TEXT)) for _ in range(4)]
    batch = [enqueue(ctx, JobSpec.chat(chat(model), Kind.TEXT, priority=Priority.BATCH)) for _ in range(3)]
    queues = [Queue(name, connection=conn) for name in queue_names(Kind.TEXT, model)]
    priority_of = {queues[0].name: Priority.INTERACTIVE, queues[1].name: Priority.BATCH}
    # Three interactive slots free; batch work may fill what is left of four in all.
    room = {Priority.INTERACTIVE: 3, Priority.BATCH: 4}
    taken = pop_waiting(conn, queues, room, priority_of)
    assert [job.id for job, _ in taken] == [j.id for j in interactive[:3]] + [batch[0].id]
    assert queues[0].count == 1 and queues[1].count == 2
    assert room == {Priority.INTERACTIVE: 0, Priority.BATCH: 0}
    # A job deleted while it waited is skipped, as rq's dequeue skips it.
    interactive[3].delete()
    assert pop_waiting(conn, queues[:1], {Priority.INTERACTIVE: 5}, priority_of) == []
    # An empty queue gives nothing and takes no room.
    room = {Priority.INTERACTIVE: 2, Priority.BATCH: 2}
    assert [job.id for job, _ in pop_waiting(conn, queues, room, priority_of)] == [j.id for j in batch[1:]]
    assert room == {Priority.INTERACTIVE: 2, Priority.BATCH: 0}


def test_start_all_does_rqs_start_bookkeeping_in_one_round_trip(conn, keys):
    from rq import SimpleWorker

    settings = Settings(key_prefix=keys.prefix)
    ctx = Context.of(conn, settings)
    model = "burst-start"
    jobs = [enqueue(ctx, JobSpec.chat(chat(model), Kind.TEXT)) for _ in range(3)]
    queue = Queue(queue_names(Kind.TEXT, model)[0], connection=conn)
    jobs[1].meta["prefixes"] = ["aaa", "bbb"]
    jobs[1].save_meta()
    conn.set(keys.cancel(jobs[2].id), 1, ex=60)
    taken = pop_waiting(conn, [queue], {Priority.INTERACTIVE: 3}, {queue.name: Priority.INTERACTIVE})
    worker = SimpleWorker([queue], connection=conn, name="burst-worker")
    worker.register_birth()
    try:
        started = start_all(worker, taken, keys, ttl=60)
        assert [s.job.id for s in started] == [j.id for j in jobs]
        assert [s.cancelled for s in started] == [False, False, True]
        for s in started:
            fresh = Job.fetch(s.job.id, connection=conn)
            assert fresh.get_status() == "started" and fresh.worker_name == "burst-worker"
            assert s.job.id in queue.started_job_registry.get_job_ids()
        assert conn.get(keys.held_prefix(model, "aaa")) == b"burst-worker"
        assert conn.get(keys.held_prefix(model, "bbb")) == b"burst-worker"
    finally:
        worker.register_death()


def test_jobs_waiting_for_a_worker_start_in_one_step(stack, models_dir, conn, keys):
    """Six chats wait in a model's queue before its worker starts: all are admitted in one
    pass and read in one prefill step, so their first tokens share one step's write."""
    model = alias(models_dir, "tiny-burst")
    settings = Settings(redis_url=stack.env["REDIS_URL"], key_prefix=stack.env["KEY_PREFIX"])
    ctx = Context.of(conn, settings)
    jobs = [enqueue(ctx, JobSpec.chat(chat(model, f"question {i}", max_tokens=8), Kind.TEXT)) for i in range(6)]
    worker = stack.start_worker(model, WORKER_CAPACITY=8)
    try:
        wait_until(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs), 60, "the six chats")
        firsts = []
        for job in jobs:
            deltas = [i for i, fields in conn.xrange(keys.stream(job.id)) if fields[b"type"] == b"delta"]
            firsts.append(int(deltas[0].split(b"-")[0]))
        assert len(firsts) == 6
        # One step writes every job's entries in one pipelined round trip: the same millisecond
        # or the next. One job admitted ahead would have its first token a whole step earlier.
        assert max(firsts) - min(firsts) <= 1, firsts
    finally:
        worker.stop()
