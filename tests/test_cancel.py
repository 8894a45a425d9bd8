"""A client that leaves cancels its job: a queued job leaves the queue and never runs; a
running one stops generating within a step. Either way rq says `canceled`."""

from __future__ import annotations

import json
import time

import requests
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry

from contract.stream import EventType, StreamReader

from .support import SLOW, alias, wait_until


def open_stream(api_url, max_tokens=2000, model="tiny-text", **extra):
    body = {
        **extra,
        "model": model,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    response = requests.post(api_url + "/v1/chat/completions", json=body, stream=True, timeout=30)
    assert response.status_code == 200
    job_id = response.headers["X-Request-Id"].removeprefix("chatcmpl-")
    # One line iterator per response: a dropped iterator closes the connection.
    response.lines = response.iter_lines(decode_unicode=True)
    return response, job_id


def read_until(response, predicate):
    for line in response.lines:
        if predicate(line):
            return line
    raise AssertionError("stream ended")


def status(conn, job_id):
    return Job.fetch(job_id, connection=conn).get_status()


def stream_events(conn, keys, job_id):
    return StreamReader(conn, keys, job_id).read()


def test_disconnect_cancels_a_running_job_within_a_step(api_url, text_worker, conn, keys):
    response, job_id = open_stream(api_url)
    read_until(response, lambda line: '"content":"' in line and '"content":""' not in line)
    response.close()
    wait_until(lambda: status(conn, job_id) == JobStatus.CANCELED, 15, "job canceled")
    events = stream_events(conn, keys, job_id)
    assert events[-1].type == EventType.CANCELLED
    produced = len(events)
    time.sleep(0.5)
    assert len(stream_events(conn, keys, job_id)) == produced, "worker kept generating"
    assert events[-1].data["completion_tokens"] < 2000


def test_disconnect_while_queued_takes_the_job_off_the_queue(stack, api_url, models_dir, conn, keys):
    model = alias(models_dir, "tiny-one-slot", target=SLOW)  # the busy job is still running when it is closed
    worker = stack.start_worker(model, WORKER_CAPACITY=1)
    busy, busy_id = open_stream(api_url, model=model)
    read_until(busy, lambda line: line.startswith("data:"))
    waiting, waiting_id = open_stream(api_url, model=model)
    read_until(waiting, lambda line: line.startswith(": keepalive"))
    assert status(conn, waiting_id) == JobStatus.QUEUED
    waiting.close()
    wait_until(lambda: status(conn, waiting_id) == JobStatus.CANCELED, 15, "queued job canceled")
    busy.close()
    wait_until(lambda: status(conn, busy_id) == JobStatus.CANCELED, 15, "running job canceled")
    # The worker moved on without ever running the cancelled job.
    time.sleep(0.5)
    assert Job.fetch(waiting_id, connection=conn).started_at is None
    assert [e.type for e in stream_events(conn, keys, waiting_id)] == [EventType.CANCELLED]
    worker.stop()


def test_after_cancellations_the_worker_still_serves(api_url, text_worker):
    body = {"model": "tiny-text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    response = requests.post(
        api_url + "/v1/chat/completions",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


def test_non_streaming_client_that_gives_up_cancels_its_job(api_url, text_worker, conn):
    canceled = CanceledJobRegistry(queue=Queue("text:tiny-text:interactive", connection=conn))
    before = set(canceled.get_job_ids())
    body = {
        "model": "tiny-text",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 2000,
        "temperature": 0,
    }
    try:
        requests.post(api_url + "/v1/chat/completions", json=body, timeout=0.5)
        raise AssertionError("the request should outlast the client's timeout")
    except requests.Timeout:
        pass
    new = wait_until(lambda: set(canceled.get_job_ids()) - before, 10, "the abandoned job cancelled")
    (job_id,) = new
    assert Job.fetch(job_id, connection=conn).get_status() == JobStatus.CANCELED


def test_a_chat_job_is_cancelled_by_its_id_from_anywhere(api_url, stack, models_dir, conn):
    model = alias(models_dir, "tiny-cancel-by-id", target=SLOW)
    worker = stack.start_worker(model)
    try:
        response, job_id = open_stream(api_url, model=model)
        read_until(response, lambda line: '"content"' in line)  # it is generating
        url = f"{api_url}/v1/chat/completions/chatcmpl-{job_id}/cancel"
        answer = requests.post(url, timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        error = read_until(response, lambda line: line.startswith("data:") and '"error"' in line)
        assert json.loads(error.removeprefix("data: "))["error"]["code"] == "job_cancelled"
        wait_until(lambda: Job.fetch(job_id, connection=conn).get_status() == JobStatus.CANCELED, 10, "canceled")
        assert requests.post(url, timeout=10).json()["status"] == "finished"
        unknown = requests.post(f"{api_url}/v1/chat/completions/chatcmpl-{'0' * 32}/cancel", timeout=10)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "completion_not_found"
    finally:
        worker.stop()
