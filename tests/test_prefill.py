"""A long prompt never stalls the batch (Hardening II, case 1): the text engine prefills it in
PREFILL_CHUNK pieces between decode steps, so a short request that arrives meanwhile starts
generating within a few steps, and removing the long one mid-prefill frees it at once.
In-process on the tiny model: steps are counted, not timed."""

from __future__ import annotations

import pytest

from contract.payloads import ChatJob, ChatMessage, SamplingParams
from contract.settings import Settings
from contract.stream import EventType
from worker_text.engine import TextEngine, default_prefill_chunk
from worker_text.loading import load_text_model
from worker_text.tiny import build

CHUNK = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefill")
    build(root / "tiny-text")
    return load_text_model("tiny-text", Settings(models_dir=str(root)))


def job(text: str, max_tokens: int) -> ChatJob:
    return ChatJob(model="tiny-text", messages=[ChatMessage(role="user", content=text)], max_tokens=max_tokens,
                   sampling=SamplingParams(temperature=0))  # fmt: skip


def first_delta_after(engine: TextEngine, job_id: str, most: int) -> tuple[int, set[str]]:
    """Steps until `job_id` emits its first text, and which jobs emitted anything meanwhile."""
    seen: set[str] = set()
    for step in range(1, most + 1):
        events, _ = engine.step()
        seen |= {j for j, kind, _ in events if kind == EventType.DELTA}
        if job_id in seen:
            return step, seen
    raise AssertionError(f"{job_id} produced no token in {most} steps")


def test_a_short_request_starts_within_a_few_chunks_of_a_long_prompt(model):
    engine = TextEngine(model, capacity=4, prompt_cache_bytes=0, prefill_chunk=CHUNK)
    long_prompt = engine.add("long", job("The quick brown fox jumps over the lazy dog. " * 120, max_tokens=4))
    assert long_prompt["prompt_tokens"] > 40 * CHUNK  # a prefill of 40+ chunks
    engine.step()  # the long prefill is under way
    short_prompt = engine.add("short", job("hi", max_tokens=4))
    steps, emitted = first_delta_after(engine, "short", most=40)
    own_chunks = -(-short_prompt["prompt_tokens"] // CHUNK)
    # Its own prefill, the hand-over to generation and a token or two the detokenizer holds
    # back — not the long prompt's 40+ chunks.
    assert steps <= own_chunks + 4, f"the short request waited {steps} steps"
    assert "long" not in emitted  # still prefilling: it was not run to the end first
    removed = engine.remove(["long"])  # a cancel mid-prefill
    assert removed == {"long": 0}
    events, finished = engine.step()
    assert {j for j, _, _ in events} <= {"short"}


def test_the_default_chunk_is_small_on_a_cpu():
    assert default_prefill_chunk() == 64  # the tests run on MLX's CPU backend
    assert Settings().prefill_chunk == 0  # 0: the default for the device
