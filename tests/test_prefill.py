"""A long prompt never stalls the batch (Hardening II, case 1): the text engine prefills it in
PREFILL_CHUNK pieces between decode steps, so a short request that arrives meanwhile starts
generating within a few steps, and removing the long one mid-prefill frees it at once.
In-process on the tiny model: steps are counted, not timed."""

from __future__ import annotations

import pytest

from contract.payloads import ChatJob, ChatMessage, SamplingParams
from contract.settings import Settings
from contract.stream import EventType
from mlx_common.prefill import default_prefill_chunk
from worker_text.engine import TextEngine
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


def run_all(engine: TextEngine, job_ids: set[str]) -> tuple[dict[str, str], dict[str, dict]]:
    texts: dict[str, str] = {}
    usages: dict[str, dict] = {}
    for _ in range(500):
        events, finished = engine.step()
        for job_id, kind, data in events:
            if kind == EventType.DELTA:
                texts[job_id] = texts.get(job_id, "") + data.get("text", "")
        usages.update(finished)
        if set(usages) >= job_ids:
            return texts, usages
    raise AssertionError("the jobs did not finish")


def test_identical_prompts_admitted_together_share_one_prefill(model):
    """The n choices of one request: the first prefills the prompt, the others start from its
    cache and prefill only the last token; greedy, all three say what one alone says."""
    prompt = "Tell me everything about the sea. " * 6
    alone = TextEngine(model, capacity=4, prompt_cache_bytes=0, prefill_chunk=CHUNK)
    alone.add("alone", job(prompt, max_tokens=12))
    solo, _ = run_all(alone, {"alone"})
    engine = TextEngine(model, capacity=4, prompt_cache_bytes=0, prefill_chunk=CHUNK)
    starts = [engine.add(f"c{i}", job(prompt, max_tokens=12)) for i in range(3)]
    length = starts[0]["prompt_tokens"]
    assert [s["cached_tokens"] for s in starts] == [0, length - 1, length - 1]
    texts, usages = run_all(engine, {"c0", "c1", "c2"})
    assert texts == {"c0": solo["alone"], "c1": solo["alone"], "c2": solo["alone"]}
    assert [usages[c]["prompt_tokens_details"]["cached_tokens"] for c in ("c0", "c1", "c2")] == [
        0,
        length - 1,
        length - 1,
    ]


def test_followers_of_a_cancelled_leader_start_on_their_own(model):
    engine = TextEngine(model, capacity=4, prompt_cache_bytes=0, prefill_chunk=CHUNK)
    prompt = "Tell me everything about the sea. " * 6
    for i in range(3):
        engine.add(f"c{i}", job(prompt, max_tokens=5))
    engine.step()  # the leader's prefill is under way
    assert engine.remove(["c0", "c2"]) == {"c0": 0, "c2": 0}  # the leader, and a follower still waiting
    texts, usages = run_all(engine, {"c1"})
    assert set(usages) == {"c1"} and usages["c1"]["completion_tokens"] == 5
