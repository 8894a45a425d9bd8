"""A fuzz corpus against the live API (Hardening II, item 10): every field of every JSON body
we accept, and every id in a path, replaced in turn by values a careless or hostile client
sends — wrong types, extremes, lone surrogates, deep nesting, huge strings. Whatever the
answer, it is never a 5xx, always OpenAI's error shape when it is an error, never slow; and
the server serves normally afterwards. tests/test_hostile.py holds the reported cases."""

from __future__ import annotations

import json
import time

import pytest
import requests

from .support import say_hi

HOSTILE = [
    None, True, False, 0, -1, 2**63, -(2**63), 1.5, 1e308, "", "x" * 20_000, "a\ud800b", "../../etc/passwd",
    "%00", [], [None], [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]], {}, {"": None}, {"type": None}, {"type": []},
]  # fmt: skip
"""Values every field is set to in turn (json.dumps writes the lone surrogate as a valid
escape, as a client's JSON library would)."""

CHAT = {"model": "tiny-text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
CHAT_FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
    "stop", "stream", "stream_options", "logprobs", "top_logprobs", "logit_bias", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "n", "user", "store", "metadata", "response_format", "tools",
    "tool_choice", "parallel_tool_calls", "unknown_field",
]  # fmt: skip
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id", "unknown_field"]
PART_FIELDS = ["type", "text", "image_url", "unknown_field"]
DOCUMENT = {"model": "tiny-text", "images": ["AAAA"], "max_tokens": 2}
DOCUMENT_FIELDS = ["model", "prompt", "pages", "dpi", "max_tokens", "combine", "combine_model", "document", "images"]
BATCH = {"input_file_id": "file-" + "0" * 32, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
BATCH_FIELDS = ["input_file_id", "endpoint", "completion_window", "metadata"]
IDS = ["x", "0" * 32, "chatcmpl-" + "0" * 32, "%2e%2e%2f", "a" * 600, "%ud800", "..", "%00"]
PATHS = ["/v1/chat/completions/{}", "/v1/models/{}", "/v1/batches/{}", "/v1/files/{}", "/v1/files/{}/content",
         "/v1/documents/{}", "/v1/documents/{}/result"]  # fmt: skip
SLOW_AFTER = 30.0
"""Seconds any one answer may take (a 2-token generation on tiny-text takes well under one)."""


def cases():
    for field in CHAT_FIELDS:
        for value in HOSTILE:
            yield "/v1/chat/completions", {**CHAT, field: value}
    for field in MESSAGE_FIELDS:
        for value in HOSTILE:
            yield "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "hi", field: value}]}
    for field in PART_FIELDS:
        for value in HOSTILE:
            part = {"type": "text", "text": "hi", field: value}
            yield "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [part]}]}
    for field in DOCUMENT_FIELDS:
        for value in HOSTILE:
            yield "/v1/documents", {**DOCUMENT, field: value}
    for field in BATCH_FIELDS:
        for value in HOSTILE:
            yield "/v1/batches", {**BATCH, field: value}


def check(response: requests.Response, took: float, what: str) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    assert took < SLOW_AFTER, (what, took)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, (what, error)
        assert error["message"] and "Traceback" not in error["message"] and "/work/" not in error["message"]


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def test_every_field_of_every_body_set_to_hostile_values(api_url, text_worker, session):
    statuses: dict[int, int] = {}
    for path, body in cases():
        what = f"{path} {json.dumps(body)[:200]}"
        started = time.monotonic()
        response = session.post(api_url + path, data=json.dumps(body), timeout=SLOW_AFTER,
                                headers={"Content-Type": "application/json"})  # fmt: skip
        check(response, time.monotonic() - started, what)
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            assert "data: [DONE]" in response.text or '"error"' in response.text, what
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(400, 0) > 300 and statuses.get(200, 0) > 10, statuses  # both sides were reached


def test_every_id_in_a_path_set_to_hostile_values(api_url, session):
    for template in PATHS:
        for value in IDS:
            started = time.monotonic()
            response = session.get(api_url + template.format(value), timeout=SLOW_AFTER)
            check(response, time.monotonic() - started, template.format(value))
            assert response.status_code in (400, 404), (template, value, response.status_code)


def test_the_server_serves_normally_afterwards(api_url, text_worker):
    assert requests.get(api_url + "/health", timeout=10).json()["status"] == "ok"
    assert say_hi(api_url, "tiny-text", max_tokens=3).usage.completion_tokens == 3
