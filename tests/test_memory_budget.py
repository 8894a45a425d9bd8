"""Memory-aware admission (worker_text/memory.py), end to end: a text worker on a small memory
budget (WORKER_MEMORY_GB) given more long requests than fit at once runs them all — some wait
for memory, none crashes — with its KV reservations and MLX's peak memory under the budget; a
request that could never fit is a 400 naming the limit; /admin/status shows the figures."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import requests

from .support import alias, client_for, wait_until

LIMIT_GB = 0.0022
"""2.36 MB: tiny-text's weights take ~0.5 MB; 90 % of the rest, halved for the copies the batch
cache makes as it grows, leaves ~0.8 MB of KV: two of the requests below (~580 tokens, 768 in
whole buffers, of 512 bytes) at a time, not three."""
PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)


@pytest.fixture(scope="module")
def budget_model(stack, models_dir):
    model = alias(models_dir, "tiny-budget")
    stack.start_worker(model, WORKER_MEMORY_GB=str(LIMIT_GB), PROMPT_CACHE_BYTES="0", WORKER_CAPACITY="8")
    return model


def memory(api_url: str, model: str) -> dict:
    workers = requests.get(api_url + "/admin/status", timeout=10).json()["workers"]
    return next(w["memory"] for w in workers if w["model"] == model)


def test_more_long_requests_than_fit_all_complete_under_the_budget(api_url, budget_model):
    figures = wait_until(lambda: memory(api_url, budget_model), 10, "the worker's memory figures")
    assert figures["kv_bytes_per_token"] == 512 and figures["limit_bytes"] == int(LIMIT_GB * 1024**3)
    client = client_for(api_url)
    answers: list = []
    seen: list[dict] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(memory(api_url, budget_model))
            time.sleep(0.1)

    def ask():
        answers.append(
            client.chat.completions.create(
                model=budget_model, messages=[{"role": "user", "content": PROMPT}], max_tokens=300, timeout=300
            )
        )

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=ask) for _ in range(6)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(timeout=300)
    done.set()
    watcher.join()
    assert len(answers) == 6
    # All complete (reservations are for max_tokens; a random model may end earlier).
    assert all(a.choices[0].finish_reason in ("length", "stop") and a.usage.completion_tokens for a in answers)
    budget = figures["kv_budget_bytes"]
    assert max(s["kv_reserved_bytes"] for s in seen) <= budget
    assert max(s["jobs_waiting_for_memory"] for s in seen) >= 1  # some had to wait
    assert max(s["peak_bytes"] for s in seen) <= figures["limit_bytes"], seen[-1]
    wait_until(lambda: memory(api_url, budget_model)["kv_reserved_bytes"] == 0, 10, "the reservations to be released")


def test_a_request_that_could_never_fit_is_refused(api_url, budget_model):
    client = client_for(api_url)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=budget_model, messages=[{"role": "user", "content": PROMPT}], max_tokens=1500
        )
    assert refused.value.code == "kv_budget_exceeded"
    assert "WORKER_MEMORY_GB" in refused.value.message and "max_tokens" in refused.value.message


@pytest.fixture(scope="module")
def kv8_model(stack, models_dir):
    """tiny-text widened to a head size of 32 (the smallest quantization group), KV in 8 bits."""
    from worker_text.tiny import build

    if not (models_dir / "tiny-kv8").exists():
        build(models_dir / "tiny-kv8", hidden_size=128)
    stack.start_worker("tiny-kv8", KV_BITS="8", KV_GROUP_SIZE="32")
    return "tiny-kv8"


def test_kv_bits_8_answers_with_a_smaller_cache(api_url, kv8_model):
    client = client_for(api_url)
    answer = client.chat.completions.create(
        model=kv8_model, messages=[{"role": "user", "content": PROMPT}], max_tokens=40, temperature=0
    )
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    again = client.chat.completions.create(  # the prompt cache serves quantized caches too
        model=kv8_model, messages=[{"role": "user", "content": PROMPT}], max_tokens=40, temperature=0
    )
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert again.choices[0].message.content == answer.choices[0].message.content
    figures = wait_until(lambda: memory(api_url, kv8_model), 10, "the worker's memory figures")
    # float32 KV of this shape: 2 layers x (keys + values) x 2 heads x 32 x 4 bytes = 1,024 a token
    assert figures["kv_bits"] == 8 and figures["kv_bytes_per_token"] < 0.6 * 1024


def test_a_group_size_the_heads_cannot_take_fails_the_load(stack, models_dir, api_url):
    """tiny-text's heads have 16 values: no quantization group fits; the worker says why."""
    model = alias(models_dir, "tiny-kv-bad")
    proc = stack.start_worker(model, wait=False, KV_BITS="8", KV_GROUP_SIZE="32")
    wait_until(lambda: "group" in proc.log() and "head" in proc.log(), 60, "the load to fail with the reason")
