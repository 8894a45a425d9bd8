"""Errors never leak, and every answer can be found in the log.

Requests built to fail every way we know (bad JSON, wrong types, unknown models and routes,
a huge body, bad model paths on the admin API, wrong credentials, a prompt the worker
refuses, Redis unreachable) must answer without server paths, tracebacks, Redis URLs or
secrets; each answer's `X-Request-Id` must appear in the API's log, on the access line and,
for error answers, on the line that says why."""

from __future__ import annotations

import json
import logging

import pytest
import requests

import api
from contract.settings import Settings

from .support import ROOT, free_port, wait_until
from .test_errors import GOOD

KEY = "sk-leak-test-key-5f1e"
ADMIN = "admin-leak-test-token-77a0"
REDIS_PASSWORD = "hunter2-redis-password"
FORBIDDEN = [str(ROOT), "/work/", "/tmp/", "Traceback", 'File "', "redis://", "rediss://", KEY, ADMIN, REDIS_PASSWORD]


@pytest.fixture(scope="module")
def guarded(stack):
    """An API with an API key and an admin token (secrets a response could leak)."""
    proc, url = stack.start_api(API_KEYS=KEY, ADMIN_TOKEN=ADMIN)
    yield proc, url
    proc.stop()


USER = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
TOO_LONG = [{"role": "user", "content": "x" * 3000}]

BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", dict(data="{not json", headers={**USER, "Content-Type": "application/json"})),
    ("POST", "/v1/chat/completions", dict(data=b"\xff\xfe\x00", headers={**USER, "Content-Type": "application/json"})),
    ("POST", "/v1/chat/completions", dict(json={**GOOD, "temperature": "hot"}, headers=USER)),
    ("POST", "/v1/chat/completions", dict(json={**GOOD, "messages": [{"role": "tool"}]}, headers=USER)),
    ("POST", "/v1/chat/completions", dict(json={**GOOD, "model": "gpt-17"}, headers=USER)),
    ("POST", "/v1/chat/completions", dict(json={**GOOD, "model": "../../etc/passwd"}, headers=USER)),
    ("POST", "/v1/chat/completions", dict(json={**GOOD, "messages": TOO_LONG}, headers=USER)),
    ("POST", "/v1/chat/completions", dict(json={**GOOD, "messages": TOO_LONG, "stream": True}, headers=USER)),
    ("POST", "/v1/chat/completions", dict(data=b"x" * (17 * 1024 * 1024), headers=USER)),
    ("POST", "/v1/chat/completions", dict(json=GOOD, headers={"Authorization": "Bearer " + KEY[:-1]})),
    ("POST", "/v1/chat/completions", dict(json=GOOD, headers=ADMIN_AUTH)),
    ("GET", "/v1/models/no-such-model", dict(headers=USER)),
    ("GET", "/v1/chat/completions/chatcmpl-" + "0" * 32, dict(headers=USER)),
    ("GET", "/v1/nothing-here", dict(headers=USER)),
    ("PUT", "/v1/models", dict(headers=USER)),
    ("POST", "/admin/load?model_path=../secrets", dict(headers=ADMIN_AUTH)),
    ("POST", "/admin/load?model_path=/etc/passwd", dict(headers=ADMIN_AUTH)),
    ("POST", "/admin/load?model_path=no-such-model&replicas=lots", dict(headers=ADMIN_AUTH)),
    ("POST", "/admin/unload?model_path=org/not-loaded", dict(headers=ADMIN_AUTH)),
    ("GET", "/admin/commands/nope", dict(headers=ADMIN_AUTH)),
    ("GET", "/admin/status", dict(headers=USER)),
    ("GET", "/metrics", dict(headers={"Authorization": "Basic !!not-base64"})),
    ("GET", "/rq/", dict()),
]


def assert_clean(response: requests.Response) -> None:
    assert response.status_code >= 400, response.text
    body = response.text
    for secret in FORBIDDEN:
        assert secret not in body, (secret, body)
    if response.headers["Content-Type"].startswith("application/json") and not response.url.endswith("/health"):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_failing_requests_answer_without_paths_traces_or_secrets(guarded, text_worker):
    proc, url = guarded
    responses = [requests.request(method, url + path, timeout=60, **kw) for method, path, kw in BAD_REQUESTS]
    for response in responses:
        assert_clean(response)
    ids = [r.headers["X-Request-Id"] for r in responses]
    assert len(set(ids)) == len(ids)
    log = wait_until(lambda: _log_with(proc, ids), 10, "every request id in the log")
    for response in responses:
        request_id = response.headers["X-Request-Id"]
        lines = [line for line in log.splitlines() if request_id in line]
        assert any(str(response.status_code) in line and "HTTP/1.1" in line for line in lines), lines  # access
        assert any(f"-> {response.status_code} " in line for line in lines), lines  # why
    for secret in (KEY, ADMIN):
        assert secret not in log


def _log_with(proc, ids: list[str]) -> str | None:
    log = proc.log_path.read_text(errors="replace")
    return log if all(log.count(i) >= 2 for i in ids) else None


def test_chat_answers_carry_their_completion_id_as_request_id(guarded, text_worker):
    _, url = guarded
    response = requests.post(url + "/v1/chat/completions", json=GOOD, headers=USER, timeout=60)
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == response.json()["id"]
    streamed = requests.post(url + "/v1/chat/completions", json={**GOOD, "stream": True}, headers=USER, timeout=60)
    first = json.loads(streamed.text.split("data: ", 1)[1].split("\n", 1)[0])
    assert streamed.headers["X-Request-Id"] == first["id"]


def test_redis_unreachable_leaks_neither_its_url_nor_its_password(stack):
    dead = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    proc, url = stack.start_api(REDIS_URL=dead, API_KEYS=KEY, ADMIN_TOKEN=ADMIN)
    try:
        for method, path, headers in [
            ("GET", "/v1/models", USER),
            ("POST", "/v1/chat/completions", USER),
            ("GET", "/admin/status", ADMIN_AUTH),
            ("GET", "/health", {}),
            ("GET", "/metrics", ADMIN_AUTH),
        ]:
            response = requests.request(method, url + path, json=GOOD, headers=headers, timeout=30)
            assert response.status_code == 503, (path, response.text)
            assert_clean(response)
        log = proc.log_path.read_text(errors="replace")
        assert REDIS_PASSWORD not in log and KEY not in log and ADMIN not in log
    finally:
        proc.stop()


def test_an_unexpected_failure_is_a_generic_500_whose_trace_is_logged_under_its_id(redis_server, caplog):
    app = api.create_app(Settings(redis_url=redis_server.url, key_prefix="unit:"))

    def boom():
        raise RuntimeError(f"cannot read {ROOT}/var/secret.key via redis://:{REDIS_PASSWORD}@10.0.0.1")

    app.add_url_rule("/boom", view_func=boom)
    with caplog.at_level(logging.INFO, logger="mis"):
        response = app.test_client().get("/boom")
    assert response.status_code == 500
    request_id = response.headers["X-Request-Id"]
    error = response.get_json()["error"]
    assert error["code"] == "internal_error" and request_id in error["message"]
    for secret in FORBIDDEN:
        assert secret not in response.get_data(as_text=True)
    traced = [r for r in caplog.records if r.exc_info]
    assert traced and traced[0].request_id == request_id and "RuntimeError" in caplog.text


def test_the_dashboard_names_no_redis_address_nor_versions(api_url, redis_server):
    """Hardening II, case 8: /rq showed the Redis URL and the rq versions (loopback: admin open)."""
    page = requests.get(api_url + "/rq/", timeout=10)
    assert page.status_code == 200 and "redis #0" in page.text
    address = redis_server.url.split("://", 1)[1].split("/", 1)[0]
    assert address not in page.text and "redis://" not in page.text
    assert "(not shown)" in page.text


def test_recent_errors_are_what_the_client_was_told(api_url, text_worker):
    """Hardening II, case 8: /admin/status's recent errors carried exception class paths and
    raw messages; now the job's own code and message."""
    too_long = {"model": "tiny-text", "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 2}
    refused = requests.post(api_url + "/v1/chat/completions", json=too_long, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    job_id = refused.headers["X-Request-Id"].removeprefix("chatcmpl-")

    def listed():
        errors = requests.get(api_url + "/admin/status", timeout=10).json()["recent_errors"]
        return [e for e in errors if e["job_id"] == job_id]

    (entry,) = wait_until(listed, 10, "the failure listed")
    assert entry["error"].startswith("context_length_exceeded: this model's context length is")
    assert "runtime." not in entry["error"] and "Error:" not in entry["error"] and "Traceback" not in entry["error"]
