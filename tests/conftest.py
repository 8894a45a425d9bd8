"""Session fixtures that build real things: a Redis server on a free port, a model root with
the tiny random-weight model, the API under gunicorn and a tiny-text worker process."""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest
import redis

from contract.context import Context
from contract.keys import Keys
from contract.settings import Settings

from .support import ROOT, SLOW, RedisServer, Stack, free_port

REAL_MODELS = ROOT / "var" / "models"
SMOLLM2 = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from worker_text.tiny import build

    root = tmp_path_factory.mktemp("models")
    build(root / "tiny-text")
    build(root / "tiny-tools", flavor="tools")  # the Qwen/Hermes tool-call template (tests/test_tools.py)
    build(root / "tiny-think", flavor="think")  # a thinking block, as Qwen3 (tests/test_reasoning.py)
    # Wider and deeper: ~100 tokens/s on a 2-core CPU instead of ~1,000, so a test that needs
    # a job still running a few seconds after it started (unload, cancel) has one on any machine.
    build(
        root / SLOW,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    return root


@pytest.fixture(scope="session")
def stack(redis_server, models_dir, tmp_path_factory):
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_server.url,
        KEY_PREFIX="test:",
        PYTHONPATH=str(ROOT),
        MODELS_DIR=os.pathsep.join([str(models_dir), str(REAL_MODELS)]),
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path_factory.mktemp("hf-cache")),
        KEEPALIVE_INTERVAL="1",
        HEARTBEAT_INTERVAL="0.5",
        WORKER_TTL="3",
        MAX_BODY_BYTES=str(16 * 1024 * 1024),
        MAX_DOCUMENT_BYTES=str(2_000_000),
        PROMPT_CACHE_DIR=str(tmp_path_factory.mktemp("prompt-cache")),
        # One worker per --preload whatever GPUs the test host has; tests/test_gpus.py sets its own.
        MANAGER_GPUS="none",
        # MLX's own BLAS, as when the suite's timings were set (tiny-slow decodes ~100 tokens/s
        # on it, 2-10x that on OpenBLAS); tests/test_cpu_path.py turns OpenBLAS on for its workers.
        CPU_BLAS="off",
    )
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("logs"))
    yield stack
    stack.stop_all()


@pytest.fixture(scope="session")
def api_url(stack) -> str:
    return stack.start_api()[1]


@pytest.fixture(scope="session")
def text_worker(stack):
    return stack.start_worker("tiny-text")


@pytest.fixture(scope="session")
def client(api_url, text_worker) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def conn(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys("test:")


@pytest.fixture(scope="session")
def ctx(redis_server, conn) -> Context:
    """The context the stack's processes use (its Redis, its key prefix)."""
    return Context.of(conn, Settings(redis_url=redis_server.url, key_prefix="test:"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test item (`item.rep_call`), so a fixture can tell at teardown
    that its test failed (tests/test_playground.py takes a screenshot then)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
