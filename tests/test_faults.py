"""Faults, with real processes: Redis killed and restarted (idle and mid-stream), a worker
SIGKILLed mid-stream under its manager, a worker's warm shutdown with jobs running and
queued, and the API stopped (gracefully, past its graceful timeout, or killed) with jobs in
flight. Everything here runs on a Redis of its own (append-only, like `make run`'s), so the
session's stack never sees these faults."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import openai
import pytest
import redis
import requests
from rq import Queue
from rq.job import Job, JobStatus

from contract.keys import Keys
from contract.registry import live_workers

from .faults_support import (
    PersistentRedis,
    first_content,
    gone,
    gunicorn_workers,
    ignore_errors,
    outcome,
    post_stream,
)
from .support import HI, Stack, alias, free_port, say_hi, wait_until


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = PersistentRedis(free_port(), tmp_path_factory.mktemp("fault-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faults(stack, own_redis, tmp_path_factory):
    """A stack of its own on `own_redis`. No load on demand: a request in the gap while a
    worker restarts must not start a second one."""
    env = {**stack.env, "REDIS_URL": own_redis.url, "AUTO_LOAD": "false"}
    own = Stack(env=env, logs=tmp_path_factory.mktemp("fault-logs"))
    yield own
    own.stop_all()


@pytest.fixture(scope="module")
def fault_api(faults) -> str:
    return faults.start_api()[1]


@pytest.fixture
def conn(own_redis) -> redis.Redis:
    return redis.Redis.from_url(own_redis.url)


KEYS = Keys("test:")


def _running(conn, model: str) -> int:
    return Queue(f"text:{model}:interactive", connection=conn).started_job_registry.count


def served(url: str, model: str) -> bool:
    try:
        return say_hi(url, model, max_tokens=3).usage.completion_tokens == 3
    except (openai.APIStatusError, openai.APIConnectionError):
        return False


def entry(conn, pid: int):
    return next((w for w in live_workers(conn, KEYS) if w.pid == pid), None)


# --- Redis ---


def test_redis_killed_while_idle_gives_quick_503s_and_all_recovers_by_itself(
    faults, fault_api, own_redis, models_dir, conn
):
    model = alias(models_dir, "fault-redis-idle")
    worker = faults.start_worker(model)
    try:
        assert served(fault_api, model)
        own_redis.kill()
        for path, method in [("/v1/chat/completions", "post"), ("/v1/models", "get"), ("/health", "get")]:
            started = time.monotonic()
            response = requests.request(
                method, fault_api + path, timeout=10, json={"model": model, "messages": HI, "max_tokens": 3}
            )
            assert time.monotonic() - started < 3, path
            assert response.status_code == 503, (path, response.text)
            if path != "/health":
                assert response.json()["error"]["code"] == "redis_unavailable"
        time.sleep(1.5)  # long enough for the worker's loops to notice and back off
        own_redis.start()
        restarted = time.time()
        wait_until(lambda: served(fault_api, model), 45, "chat after the Redis restart", interval=0.5)
        assert worker.alive(), "the worker must reconnect, not restart"
        wait_until(
            lambda: (e := entry(conn, worker.pid)) and e.heartbeat_at > restarted,
            10,
            "the worker heart-beating into the new Redis",
        )
    finally:
        own_redis.ensure_up()
        worker.stop()


def test_redis_killed_mid_stream_ends_the_stream_and_service_resumes(faults, fault_api, own_redis, models_dir, conn):
    model = alias(models_dir, "fault-redis-stream")
    worker = faults.start_worker(model)
    try:
        response = post_stream(fault_api, model, max_tokens=1900)
        first_content(response)
        plain: dict = {}
        waiting = threading.Thread(
            target=lambda: plain.update(
                response=requests.post(
                    fault_api + "/v1/chat/completions",
                    json={"model": model, "messages": HI, "max_tokens": 1900, "temperature": 0},
                    timeout=30,
                )
            )
        )
        waiting.start()
        wait_until(lambda: _running(conn, model) == 2, 10, "both jobs running")
        own_redis.kill()
        killed = time.monotonic()
        result = outcome(response, deadline=killed + 20)
        assert time.monotonic() - killed < 10
        assert not result["done"] and result["error"] is not None
        assert result["error"]["code"] == "redis_unavailable", result["error"]
        waiting.join(20)
        assert time.monotonic() - killed < 10
        assert plain["response"].status_code == 503, plain["response"].text[:300]
        assert plain["response"].json()["error"]["code"] == "redis_unavailable"
        own_redis.start()
        wait_until(lambda: served(fault_api, model), 45, "chat after the Redis restart", interval=0.5)
        assert worker.alive()
        again = outcome(post_stream(fault_api, model, max_tokens=20), time.monotonic() + 30)
        assert again["done"] and again["usage"]["completion_tokens"] == 20
        # Its outcome could not be recorded; the started-registry sweep fails it.
        wait_until(
            lambda: Job.fetch(response.job_id, connection=conn).get_status() == JobStatus.FAILED,
            20,
            "the interrupted job marked failed",
        )
    finally:
        own_redis.ensure_up()
        worker.stop()


# --- workers ---


def test_worker_sigkilled_mid_stream_errors_within_10_s_and_its_manager_restores_service(
    faults, fault_api, models_dir, conn
):
    model = alias(models_dir, "fault-kill")
    manager = faults.spawn(
        "manager",
        [sys.executable, "-m", "worker_text.manager", "--name", "fault-mgr", "--preload", model],
        MANAGER_LOGS_DIR=faults.logs,
    )
    try:
        wait_until(lambda: served(fault_api, model), 60, "the manager's worker serving", interval=0.5)
        response = post_stream(fault_api, model, max_tokens=1900)
        first_content(response)
        job = Job.fetch(response.job_id, connection=conn)
        victim = next(w.pid for w in live_workers(conn, KEYS) if w.name == job.worker_name)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        result = outcome(response, deadline=killed + 15)
        assert time.monotonic() - killed < 10
        assert result["error"] is not None and result["error"]["code"] == "worker_died", result
        wait_until(lambda: served(fault_api, model), 60, "service back after the kill", interval=0.5)
        assert time.monotonic() - killed < 60
        replacement = [w for w in live_workers(conn, KEYS) if w.model == model and w.serving]
        assert [w.manager for w in replacement] == ["fault-mgr"] and replacement[0].pid != victim
        wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 10, "the killed job marked failed")
    finally:
        manager.stop()


def test_sigterm_finishes_running_jobs_and_leaves_queued_ones_for_the_next_worker(faults, fault_api, models_dir, conn):
    """Worker A holds two streams (its capacity) and two more wait in the queue. A
    replacement B is started, then A gets SIGTERM: A finishes its two in full and exits 0;
    the two queued jobs stay in the queue for B. No client sees an error."""
    model = alias(models_dir, "fault-sigterm")
    a = faults.start_worker(model, WORKER_CAPACITY=2)
    queue = Queue(f"text:{model}:interactive", connection=conn)
    running = [post_stream(fault_api, model, max_tokens=1900, store=True) for _ in range(2)]  # rq records kept
    for response in running:
        first_content(response)
    results: dict[str, dict] = {}
    waiting = [
        threading.Thread(
            target=lambda i=i: results.update(
                {i: outcome(post_stream(fault_api, model, max_tokens=40, store=True), time.monotonic() + 90)}
            )
        )
        for i in range(2)
    ]
    for thread in waiting:
        thread.start()
    wait_until(lambda: queue.count == 2, 15, "two queued jobs")
    queued_ids = queue.get_job_ids()
    b = faults.start_worker(model, wait=False)
    try:
        wait_until(lambda: entry(conn, b.pid), 30, "the replacement registered")
        a.send(signal.SIGTERM)
        sigterm = time.time()
        finished = [outcome(response, time.monotonic() + 90) for response in running]
        for result in finished:
            assert result["done"] and result["finish"] == "length", result
            assert result["usage"]["completion_tokens"] == 1900
        assert finished[0]["text"] == finished[1]["text"]  # greedy, same prompt: same text
        wait_until(lambda: not a.alive(), 30, "worker A to exit")
        assert a.popen.returncode == 0
        for response in running:  # they were still generating when the signal came
            assert Job.fetch(response.job_id, connection=conn).ended_at.timestamp() > sigterm
        for thread in waiting:
            thread.join(90)
        assert [r["usage"]["completion_tokens"] for r in results.values() if r["done"]] == [40, 40], results
        b_name = entry(conn, b.pid).name
        assert {Job.fetch(j, connection=conn).worker_name for j in queued_ids} == {b_name}
        assert len({r["text"] for r in results.values()}) == 1  # greedy, same prompt: same text
    finally:
        for worker in (a, b):
            worker.stop(signal.SIGKILL)


# --- the API ---


def test_api_sighup_and_sigterm_let_requests_in_flight_finish(faults, models_dir):
    model = alias(models_dir, "fault-api-graceful")
    worker = faults.start_worker(model)
    api, url = faults.start_api()
    try:
        before = post_stream(url, model, max_tokens=300)
        first_content(before)
        api.send(signal.SIGHUP)  # reload: new gunicorn workers, the old ones finish their requests
        assert outcome(before, time.monotonic() + 60)["usage"]["completion_tokens"] == 300
        assert served(url, model)
        during = post_stream(url, model, max_tokens=300)
        first_content(during)
        api.send(signal.SIGTERM)
        result = outcome(during, time.monotonic() + 60)
        assert result["done"] and result["usage"]["completion_tokens"] == 300, result
        wait_until(lambda: not api.alive(), 30, "the API to exit")
        assert api.popen.returncode == 0
    finally:
        api.stop(signal.SIGKILL)
        worker.stop()


@pytest.mark.parametrize("stop", ["sighup-past-graceful-timeout", "sigkill"])
def test_api_stopped_with_jobs_queued_they_complete_and_are_fetchable(faults, models_dir, conn, stop):
    """Three requests (two streamed, one not) wait in the queue when the API goes away:
    reloaded with SIGHUP, whose old gunicorn worker kills its requests once the graceful
    timeout (1 s here) runs out, or SIGKILLed and started again. The jobs are not cancelled:
    they run, and the API serves their results by id. (The worker is frozen with SIGSTOP
    meanwhile, so the jobs are still queued when the API stops, however fast the machine.)"""
    model = alias(models_dir, f"fault-api-{stop}")
    # Its registry entry outlives the freeze, so the jobs are routed and wait for it.
    worker = faults.start_worker(model, WORKER_TTL=30)
    api, url = faults.start_api(GUNICORN_CMD_ARGS="--graceful-timeout 1")
    queue = Queue(f"text:{model}:interactive", connection=conn)
    body = {"model": model, "messages": HI, "max_tokens": 30, "temperature": 0}
    clients = [
        threading.Thread(
            target=lambda stream=stream: ignore_errors(
                requests.post, url + "/v1/chat/completions", json={**body, "stream": stream}, timeout=60
            )
        )
        for stream in (True, True, False)
    ]
    try:
        worker.send(signal.SIGSTOP)
        # Its last blocking dequeue must end first, or Redis hands it the first job.
        wait_until(lambda: not any("b" in c["flags"] for c in conn.client_list()), 10, "no blocked dequeue")
        for client in clients:
            client.start()
        wait_until(lambda: queue.count == 3, 10, "three queued jobs")
        job_ids = queue.get_job_ids()
        if stop == "sigkill":
            os.killpg(api.pid, signal.SIGKILL)
            wait_until(lambda: not api.alive(), 10, "the API to die")
            api, url = faults.start_api()
        else:
            old = gunicorn_workers(api.pid)
            api.send(signal.SIGHUP)
            wait_until(lambda: all(gone(pid) for pid in old), 30, "the old gunicorn worker to exit")
        for client in clients:
            client.join(10)
        assert queue.get_job_ids() == job_ids, "the jobs must wait in the queue, not be cancelled"
        worker.send(signal.SIGCONT)
        fetch = lambda j: requests.get(f"{url}/v1/chat/completions/chatcmpl-{j}", timeout=10)  # noqa: E731
        wait_until(lambda: all(fetch(j).status_code == 200 for j in job_ids), 60, "all three fetchable", interval=0.5)
        rerun = say_hi(url, model, max_tokens=30)
        for job_id in job_ids:
            kept = fetch(job_id).json()
            assert kept["object"] == "chat.completion" and kept["id"] == f"chatcmpl-{job_id}"
            assert kept["model"] == model and kept["choices"][0]["finish_reason"] == "length"
            assert kept["choices"][0]["message"]["content"] == rerun.choices[0].message.content
            assert kept["usage"]["completion_tokens"] == 30
            assert kept["usage"]["prompt_tokens"] == rerun.usage.prompt_tokens
        missing = requests.get(f"{url}/v1/chat/completions/chatcmpl-{'0' * 32}", timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "completion_not_found"
    finally:
        worker.send(signal.SIGCONT)
        api.stop(signal.SIGKILL)
        worker.stop()
