"""Prefix-aware routing (contract/prefixes.py) with two real workers of one model: a
conversation's turns go to the worker that holds its prefix (every turn after the first finds its
whole history in that worker's prompt cache), and when that worker dies the conversation goes on
on the other; a job left in a dead worker's own queue goes back to the model's shared queue."""

from __future__ import annotations

import pytest
from rq import Queue

from contract.prefixes import SHARED_QUEUE, direct_queue, holder, prefix_hashes, requeue_orphans, route
from contract.queues import JobSpec, enqueue

from .support import alias, client_for

SYSTEM = "You are a careful assistant. " + " ".join(["the quick brown fox jumps over the lazy dog"] * 8)


@pytest.fixture(scope="module")
def two_workers(stack, models_dir):
    model = alias(models_dir, "tiny-route")
    env = {"PROMPT_CACHE_DISK_GB": "0"}  # RAM only: a hit proves the same worker
    return model, [stack.start_worker(model, **env), stack.start_worker(model, **env)]


def test_a_conversation_sticks_to_the_worker_holding_its_prefix(api_url, two_workers, conn, keys):
    model, workers = two_workers
    client = client_for(api_url)
    messages = [{"role": "system", "content": SYSTEM}]
    previous_prompt = 0
    for turn in range(4):
        messages.append({"role": "user", "content": f"Turn {turn}: go on."})
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        cached = answer.usage.prompt_tokens_details.cached_tokens
        if turn:  # the whole previous turn (prompt and answer) is in this worker's cache
            assert cached >= previous_prompt, (turn, cached, previous_prompt)
        previous_prompt = answer.usage.prompt_tokens
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})

    # The holder dies: the next turn still gets its answer, from the other worker.
    name, _ = holder(conn, keys, model, prefix_hashes(model, _as_chat(model, messages)))
    assert name is not None
    dying = next(w for w in workers if f".{w.pid}." in name)
    dying.stop()
    messages.append({"role": "user", "content": "And now?"})
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=8, timeout=60)
    assert answer.choices[0].finish_reason in ("stop", "length")


def _as_chat(model: str, messages: list[dict]):
    """The messages as the API hashes them (contract.payloads.ChatJob's)."""
    from contract.payloads import ChatJob

    return ChatJob(model=model, messages=messages, max_tokens=1).messages


def test_a_job_left_in_a_dead_workers_queue_goes_back_to_the_shared_queue(ctx):
    from contract.keys import Kind
    from contract.payloads import ChatJob

    payload = ChatJob(model="ghost-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    spec = JobSpec.chat(payload, Kind.TEXT)
    shared = spec.queue
    spec.meta[SHARED_QUEUE] = shared
    spec.direct = direct_queue("text.ghost.1.dead")  # no such worker in the registry
    job = enqueue(ctx, spec)
    assert Queue(spec.direct, connection=ctx.conn).get_job_ids() == [job.id]
    assert requeue_orphans(ctx.conn, ctx.keys) >= 1
    assert job.id in Queue(shared, connection=ctx.conn).get_job_ids()
    assert Queue(spec.direct, connection=ctx.conn).count == 0
    Queue(shared, connection=ctx.conn).empty()


def test_one_worker_means_no_routing_lookup():
    """With the live workers the API read for the request, a model served by one worker is not
    looked up (conn=None: any Redis call would fail); the job still carries its prefixes, for
    its worker to publish."""
    from contract.keys import Keys, Kind
    from contract.payloads import ChatJob, ChatMessage
    from contract.registry import WorkerInfo, WorkerState

    messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content="hi")]
    spec = JobSpec.chat(ChatJob(model="solo", messages=messages, max_tokens=4), Kind.TEXT)
    one = [WorkerInfo(name="w1", model="solo", kind=Kind.TEXT, host="h", pid=1, state=WorkerState.IDLE)]
    route(None, Keys("t:"), spec, messages, None, 60, workers=one)  # type: ignore[arg-type]
    assert spec.meta["prefixes"] == prefix_hashes("solo", messages, None)
    assert SHARED_QUEUE not in spec.meta
