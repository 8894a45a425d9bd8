"""One worker, many requests: jobs share one batch, answers do not depend on what else is in
it, interactive work overtakes batch work, and a conversation's next turn reuses the KV
cache of the turns before it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from contract.context import Context
from contract.keys import Kind, Priority
from contract.payloads import ChatJob, ChatMessage, SamplingParams
from contract.queues import JobSpec, cancel_job, enqueue
from contract.settings import Settings

from .support import alias, client_for, wait_until

QUESTIONS = [
    "What is the capital of France?",
    "Hello, world!",
    "Count to five.",
    "Why is the sky blue?",
    "Say something in German.",
    "What is forty-two?",
    "Name a fox.",
    "Write numbers 0123.",
]


def ask(client, content, **kw):
    return client.chat.completions.create(
        model="tiny-text", messages=[{"role": "user", "content": content}], **{"temperature": 0, **kw}
    )


def timed_stream(client, content, max_tokens):
    """(seconds to the first text, seconds to the end, the text) of one streamed answer."""
    start = time.monotonic()
    first, text = None, []
    for chunk in ask(client, content, max_tokens=max_tokens, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - start
            text.append(chunk.choices[0].delta.content)
    return first, time.monotonic() - start, "".join(text)


def test_eight_concurrent_requests_share_one_batch(client):
    barrier = threading.Barrier(8)

    def run(question):
        barrier.wait()
        return timed_stream(client, question, max_tokens=150)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, QUESTIONS))
    first_tokens = [started for started, _, _ in results]
    endings = [ended for _, ended, _ in results]
    assert all(first is not None for first in first_tokens)
    # In one batch, every job has produced text before any of them has finished.
    assert max(first_tokens) < min(endings), (first_tokens, endings)


def test_greedy_answers_in_a_batch_equal_the_same_requests_alone(client):
    alone = [ask(client, q, max_tokens=40).choices[0].message.content for q in QUESTIONS]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: ask(client, q, max_tokens=40).choices[0].message.content, QUESTIONS))
    assert together == alone


def test_a_seeded_request_gives_the_same_answer_in_a_batch_as_alone(client):
    seeded = {"seed": 1234, "temperature": 1.0, "max_tokens": 30}
    alone = ask(client, QUESTIONS[0], **seeded).choices[0].message.content
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(ask, client, q, temperature=1.0, max_tokens=60) for q in QUESTIONS[1:4]]
        in_batch = ask(client, QUESTIONS[0], **seeded).choices[0].message.content
        [f.result() for f in others]
    assert in_batch == alone


def test_interactive_request_overtakes_a_batch_backlog(stack, api_url, models_dir, conn):
    """Two slots full of batch work and three more batch jobs waiting: a chat request is
    admitted at once, beside them, and none of the waiting batch jobs goes first."""
    model = alias(models_dir, "tiny-priorities")
    worker = stack.start_worker(model, WORKER_CAPACITY=2)
    settings = Settings(redis_url=stack.env["REDIS_URL"], key_prefix=stack.env["KEY_PREFIX"])
    payload = ChatJob(
        model=model,
        messages=[ChatMessage(role="user", content="go on")],
        max_tokens=1900,
        sampling=SamplingParams(temperature=0),
    )
    ctx = Context.of(conn, settings)
    batch = [enqueue(ctx, JobSpec.chat(payload, Kind.TEXT, priority=Priority.BATCH)) for _ in range(5)]
    batch_queue = Queue(f"text:{model}:batch", connection=conn)
    try:
        wait_until(
            lambda: batch_queue.count == 3 and len(batch_queue.started_job_registry) == 2,
            30,
            "two batch jobs running, three waiting",
        )
        stream = client_for(api_url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, stream=True
        )
        chunks = [c for c in stream]
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        assert batch_queue.count == 3, "a waiting batch job ran before the chat request"
        assert all(Job.fetch(j.id, connection=conn).get_status() == JobStatus.STARTED for j in batch[:2])
    finally:
        for job in batch:
            cancel_job(ctx, job.id)
        worker.stop()


@pytest.fixture(scope="module")
def wide_model(models_dir):
    """A tiny model wide enough that prefilling a long prompt takes measurable time."""
    from worker_text.tiny import build

    if not (models_dir / "tiny-wide").exists():
        build(
            models_dir / "tiny-wide",
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            max_position_embeddings=4096,
        )
    return "tiny-wide"


def test_a_second_turn_reuses_the_prompt_cache(stack, api_url, wide_model):
    worker = stack.start_worker(wide_model)
    client = client_for(api_url)
    words = "The quick brown fox jumps over the lazy dog. Hello, world! It is forty-two. "
    history = [{"role": "system", "content": words * 25}, {"role": "user", "content": "What is the capital of France?"}]

    def turn(messages):
        start, first = time.monotonic(), None
        text, usage = [], None
        for chunk in client.chat.completions.create(
            model=wide_model,
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic() - start
                text.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        return first, "".join(text), usage

    try:
        cold_ttft, answer, cold = turn(history)
        assert cold.prompt_tokens > 400 and cold.prompt_tokens_details.cached_tokens == 0
        second = [*history, {"role": "assistant", "content": answer}, {"role": "user", "content": "And Germany?"}]
        warm_ttft, _, warm = turn(second)
        assert warm.prompt_tokens_details.cached_tokens >= cold.prompt_tokens
        assert warm_ttft < cold_ttft, (warm_ttft, cold_ttft)
    finally:
        worker.stop()
