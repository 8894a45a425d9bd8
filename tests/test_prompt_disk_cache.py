"""The prompt cache on disk (worker_text/disk_cache.py, worker_text/prompt_caches.py), end to
end: a long prompt's KV is saved while it runs; after the worker restarts (its RAM cache gone),
the same prompt starts from the disk copy (`cached_tokens` > 0, a shorter time to first token),
and a new conversation that shares only the system prompt starts from that prefix."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from worker_text.disk_cache import TMP_PREFIX

from .support import wait_until

MODEL = "tiny-disk"
SYSTEM = "You are an agent with tools. " + " ".join(["search the files and answer with care"] * 40)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("disk-cache")


@pytest.fixture(scope="module")
def model(models_dir):
    """tiny-text made wider, so that prefilling ~1,000 tokens costs enough to measure on a CPU."""
    from worker_text.tiny import build

    if not (models_dir / MODEL).exists():
        build(models_dir / MODEL, hidden_size=256, num_hidden_layers=4, intermediate_size=512)
    return MODEL


def ask(api_url: str, user: str) -> tuple[float, dict]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    body = {"model": MODEL, "max_tokens": 2, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "messages": messages}  # fmt: skip
    start, first, usage = time.perf_counter(), None, {}
    with requests.post(api_url + "/v1/chat/completions", json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():
            # The first token: a chunk with text, or the finish (a random model's first tokens
            # may be invisible); the role chunk comes before any prefill and does not count.
            token = (b'"content":"' in line and b'"content":""' not in line) or b'"finish_reason":"' in line
            if first is None and line.startswith(b"data: {") and token:
                first = time.perf_counter() - start
            if line.startswith(b"data: {") and b'"usage":{' in line:
                usage = json.loads(line[6:])["usage"]
    return first or time.perf_counter() - start, usage


def saved(cache_dir: Path) -> list[Path]:
    """Prompt caches written to the end (a file being written is named tmp.*.safetensors)."""
    return [p for p in cache_dir.rglob("*.safetensors") if not p.name.startswith(TMP_PREFIX)]


def test_the_prompt_cache_survives_a_worker_restart(stack, api_url, model, cache_dir):
    env = {"PROMPT_CACHE_DIR": str(cache_dir), "PROMPT_CACHE_DISK_GB": "1"}
    worker = stack.start_worker(model, **env)
    cold, usage = ask(api_url, "What is in the first file?")
    prompt_tokens = usage["prompt_tokens"]
    assert prompt_tokens > 900 and usage["prompt_tokens_details"]["cached_tokens"] == 0
    # Written off the request's path: the whole prompt and the part before the user's message.
    wait_until(lambda: len(saved(cache_dir)) >= 2, 30, "the prefixes on disk")
    worker.stop()
    stack.start_worker(model, **env)  # a new process: its RAM cache is empty

    same, usage = ask(api_url, "What is in the first file?")
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    print(f"\n{prompt_tokens}-token prompt: cold TTFT {cold:.2f} s, after restart {same:.2f} s ({cached} cached)")
    assert cached >= prompt_tokens - 2
    assert same < cold / 2

    other, usage = ask(api_url, "Which file is the largest?")  # only the system prompt is shared
    shared = usage["prompt_tokens_details"]["cached_tokens"]
    assert prompt_tokens - 40 < shared < prompt_tokens
