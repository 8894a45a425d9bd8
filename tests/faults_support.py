"""Helpers of the fault tests (tests/test_faults.py): a Redis that keeps its data across a
kill, streams read by hand (the tests must see error events and bound every wait), and
processes watched through /proc."""

from __future__ import annotations

import json
import os
import signal
import time

import redis
import requests

from contract.redis_server import server_argv

from .support import HI, Proc, RedisServer, wait_until


class PersistentRedis(RedisServer):
    """Append-only on, as `make run` starts it: a restart finds what the killed server held."""

    def start(self) -> PersistentRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            server_argv(self.port, self.data_dir, appendonly=True), dict(os.environ), self.data_dir / "redis.log"
        ).start()
        wait_until(lambda: _pings(self.port), 10, "redis")
        return self

    def kill(self) -> None:
        self.proc.stop(signal.SIGKILL)

    def ensure_up(self) -> None:
        if not self.proc.alive():
            self.start()


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        return False


def post_stream(url: str, model: str, max_tokens: int, **extra) -> requests.Response:
    body = {
        "model": model,
        "messages": HI,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    response = requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=(5, 15))
    assert response.status_code == 200, response.text
    response.job_id = response.headers["X-Request-Id"].removeprefix("chatcmpl-")
    response.lines = response.iter_lines(decode_unicode=True)
    return response


def events(response: requests.Response, deadline: float):
    """The JSON payloads of the stream's `data:` lines until [DONE] or the stream ends;
    fails once `deadline` (time.monotonic()) passes."""
    for line in response.lines:
        assert time.monotonic() < deadline, "the stream went on past its deadline"
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return
            yield json.loads(line[6:])


def first_content(response: requests.Response) -> None:
    for event in events(response, time.monotonic() + 30):
        if event.get("choices") and event["choices"][0]["delta"].get("content"):
            return
    raise AssertionError("the stream ended before any content")


def outcome(response: requests.Response, deadline: float) -> dict:
    """Read the rest of a stream: its text, usage, finish reason, error and whether [DONE] came."""
    result = {"text": "", "usage": None, "finish": None, "error": None, "done": False}
    try:
        for event in events(response, deadline):
            if "error" in event:
                result["error"] = event["error"]
            elif event.get("usage"):
                result["usage"] = event["usage"]
            elif event.get("choices"):
                choice = event["choices"][0]
                result["text"] += choice["delta"].get("content") or ""
                result["finish"] = choice["finish_reason"] or result["finish"]
        else:
            result["done"] = result["error"] is None
    except requests.RequestException as exc:  # the connection broke: a closed stream
        result["error"] = {"code": "connection_closed", "message": str(exc)}
    return result


def gunicorn_workers(master: int) -> set[int]:
    children = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                    children.add(int(pid))
        except (OSError, ValueError):
            pass
    return children


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except OSError:
        return True


def ignore_errors(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except requests.RequestException:
        pass
