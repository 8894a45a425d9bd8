"""The worker process: model references, load failures, the Hugging Face cache offline,
warm shutdown on SIGTERM and what a client sees when a worker dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import openai
import pytest
import requests
from rq import Queue
from rq.job import Job, JobStatus

from contract.registry import WorkerState

from .support import HI, ROOT, alias, say_hi, wait_until


@pytest.mark.parametrize("ref", ["../tiny-text", "/etc", "https://example.com/m", "a;rm -rf", "no-such-model"])
def test_bad_model_references_are_refused_at_start(stack, ref):
    result = subprocess.run(
        [sys.executable, "-m", "worker_text", "--model", ref],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_symlink_escaping_the_model_root_is_refused(stack, models_dir, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(models_dir / "tiny-text", outside)
    (models_dir / "escape").symlink_to(outside)
    result = subprocess.run(
        [sys.executable, "-m", "worker_text", "--model", "escape"],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "outside the model roots" in result.stderr


def test_model_that_cannot_load_leaves_worker_up_in_error_state(stack, api_url):
    proc = stack.start_worker("test-org/not-cached", wait=False)
    try:
        info = stack.wait_for_worker(proc, "test-org/not-cached", state=WorkerState.ERROR, timeout=60)
        assert "not in the local Hugging Face cache" in info.error
        health = requests.get(api_url + "/health", timeout=5).json()
        assert any(w["state"] == "error" and w["model"] == "test-org/not-cached" for w in health["workers"])
        with pytest.raises(openai.APIStatusError) as caught:
            say_hi(api_url, "test-org/not-cached")
        assert caught.value.status_code == 503
        assert "failed to load" in caught.value.message
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
    finally:
        proc.stop(signal.SIGKILL)


def test_hub_repo_id_loads_offline_from_the_local_cache(stack, api_url, models_dir):
    cache = stack.env["HF_HUB_CACHE"]
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = os.path.join(cache, "models--test-org--tiny-hub")
    shutil.copytree(models_dir / "tiny-text", os.path.join(repo, "snapshots", revision))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as ref:
        ref.write(revision)
    proc = stack.start_worker("test-org/tiny-hub")
    try:
        assert say_hi(api_url, "test-org/tiny-hub", max_tokens=4).usage.completion_tokens == 4
    finally:
        proc.stop()


def test_sigterm_finishes_the_running_job_before_exiting(stack, api_url, models_dir):
    model = alias(models_dir, "tiny-sigterm")
    proc = stack.start_worker(model)
    stream = say_hi(api_url, model, max_tokens=400, stream=True, temperature=0, stream_options={"include_usage": True})
    chunks = iter(stream)
    next(chunks), next(chunks)
    proc.send(signal.SIGTERM)
    rest = list(chunks)
    assert rest[-1].usage.completion_tokens == 400
    assert [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason] == ["length"]
    wait_until(lambda: not proc.alive(), 15, "worker exit")
    assert proc.popen.returncode == 0


def test_worker_killed_mid_stream_fails_its_jobs_and_the_next_worker_serves(stack, api_url, models_dir, conn):
    """SIGKILL with two jobs in the batch and one queued: both streams end in an error
    within 10 s, rq marks both jobs failed, the queued client gets a 503 (no worker left),
    and a new worker for the model serves the next request."""
    model = alias(models_dir, "tiny-kill")
    proc = stack.start_worker(model, WORKER_CAPACITY=2)
    streams = [iter(say_hi(api_url, model, max_tokens=1900, stream=True)) for _ in range(2)]
    for chunks in streams:
        next(chunks), next(chunks)
    job_ids = Queue(f"text:{model}:interactive", connection=conn).started_job_registry.get_job_ids()
    assert len(job_ids) == 2
    queued = {}

    def wait_in_queue():
        try:
            say_hi(api_url, model)
        except openai.APIStatusError as exc:
            queued["error"] = exc

    waiter = threading.Thread(target=wait_in_queue)
    waiter.start()
    wait_until(lambda: Queue(f"text:{model}:interactive", connection=conn).count == 1, 10, "a queued job")
    proc.send(signal.SIGKILL)
    killed = time.monotonic()
    for chunks in streams:
        with pytest.raises(openai.APIError) as caught:
            for _ in chunks:
                pass
        assert time.monotonic() - killed < 10
        assert "worker" in str(caught.value.message)
    waiter.join(15)
    assert queued["error"].status_code == 503 and "no worker serves" in queued["error"].message
    # the waiting job was taken off the queue, not left for a future worker
    wait_until(lambda: Queue(f"text:{model}:interactive", connection=conn).count == 0, 5, "queue emptied")
    wait_until(
        lambda: all(Job.fetch(j, connection=conn).get_status() == JobStatus.FAILED for j in job_ids),
        20,
        "the killed worker's jobs marked failed",
    )
    replacement = stack.start_worker(model)
    try:
        assert say_hi(api_url, model, max_tokens=3).usage.completion_tokens == 3
    finally:
        replacement.stop()


def test_worker_survives_a_redis_restart(stack, models_dir, tmp_path):
    from .support import RedisServer, free_port

    own_redis = RedisServer(free_port(), tmp_path / "redis").start()
    model = alias(models_dir, "tiny-redis-restart")
    api, url = stack.start_api(REDIS_URL=own_redis.url)
    proc = stack.spawn(
        "worker-restart", [sys.executable, "-m", "worker_text", "--model", model], REDIS_URL=own_redis.url
    )
    ask = lambda: say_hi(url, model, max_tokens=3)  # noqa: E731
    try:
        wait_until(lambda: requests.get(url + "/health", timeout=5).json()["status"] == "ok", 60, "worker up")
        assert ask().usage.completion_tokens == 3
        own_redis.stop()
        time.sleep(2)
        own_redis.start()
        wait_until(
            lambda: requests.get(url + "/health", timeout=5).json()["status"] == "ok", 30, "worker back in the registry"
        )
        assert ask().usage.completion_tokens == 3
        assert proc.alive()
    finally:
        proc.stop()
        api.stop()
        own_redis.stop()


def test_job_timeout_stops_generation_and_says_so(stack, text_worker):
    api, url = stack.start_api(JOB_TIMEOUT=1)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            say_hi(url, "tiny-text", max_tokens=1900, temperature=0)
        assert caught.value.status_code == 504
        assert "(1 s, JOB_TIMEOUT)" in caught.value.message
        assert say_hi(url, "tiny-text", max_tokens=2).usage.completion_tokens == 2
    finally:
        api.stop()


def test_a_full_queue_answers_429_with_retry_after(stack, models_dir, conn):
    model = alias(models_dir, "tiny-429")
    worker = stack.start_worker(model, WORKER_CAPACITY=1)
    # The per-model limit, not the global one, applies to this model.
    api, url = stack.start_api(QUEUE_DEPTH_LIMITS=f'{{"{model}": 1}}')
    try:
        stream = say_hi(url, model, max_tokens=1900, temperature=0, stream=True)
        next(iter(stream))
        waiting = threading.Thread(target=lambda: say_hi(url, model, max_tokens=2))
        waiting.start()
        wait_until(lambda: Queue(f"text:{model}:interactive", connection=conn).count == 1, 10, "a queued job")
        response = requests.post(
            url + "/v1/chat/completions", timeout=10, json={"model": model, "messages": HI, "max_tokens": 2}
        )
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["error"]["code"] == "queue_full"
        stream.close()
        waiting.join(30)
        assert not waiting.is_alive()
    finally:
        api.stop()
        worker.stop()
