"""Anthropic's Messages API, what goes wrong (tests/test_messages.py has what goes right):
every error — a bad field, hostile values, an unknown path, a failure mid-stream, a missing
or wrong key given as `x-api-key` or Bearer — is in Anthropic's shape, never a 5xx; a client
that leaves, or a queued message whose client goes, cancels its job."""

from __future__ import annotations

import json

import anthropic
import pytest
import requests
from rq.job import Job, JobStatus

from contract.queues import cancel_job

from .support import SLOW, alias, wait_until
from .test_fuzz import HOSTILE
from .test_messages import GREEDY, HI, TOOLS, sdk


@pytest.fixture(scope="module")
def claude(api_url, text_worker) -> anthropic.Anthropic:
    return sdk(api_url)


# --- errors and auth --------------------------------------------------------------------------


def anthropic_error(reply: requests.Response, status: int, kind: str) -> str:
    body = reply.json()
    assert reply.status_code == status and body["type"] == "error", body
    assert set(body) == {"type", "error", "request_id"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    return body["error"]["message"]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [*HI, {"role": "assistant", "content": "Sure"}]}, "prefill"),
        ({"top_k": "3"}, "top_k"),
        ({"seed": 3}, "seed: Extra inputs are not permitted"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences: at most 4"),
        ({"tools": [{"name": "f", "input_schema": {"not": {}}}], "tool_choice": {"type": "any"}},
         "tools.0.input_schema cannot be enforced"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": TOOLS}, "tool_choice"),
        ({"thinking": {"type": "enabled", "budget_tokens": 50}}, "budget_tokens must be less than max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
         "tool_use blocks do not belong in user messages"),
    ],
)  # fmt: skip
def test_a_bad_request_is_an_invalid_request_error_naming_the_field(api_url, text_worker, change, words):
    body = {"model": "tiny-text", "max_tokens": 20, "messages": HI, **change}
    body = {k: v for k, v in body.items() if v is not None}
    assert words in anthropic_error(requests.post(api_url + "/v1/messages", json=body, timeout=30), 400,
                                    "invalid_request_error")  # fmt: skip


FIELDS = ["model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k",
          "tools", "tool_choice", "thinking", "output_config", "metadata", "stream", "cache_control",
          "unknown_field"]  # fmt: skip
BLOCK_FIELDS = ["type", "text", "source", "id", "name", "input", "tool_use_id", "content", "is_error",
                "cache_control", "unknown_field"]  # fmt: skip


def test_hostile_values_are_never_a_5xx_and_always_anthropic_errors(api_url, text_worker):
    """tests/test_fuzz.py's corpus, every field of a message and of a block in turn."""
    base = {"model": "tiny-text", "max_tokens": 2, "messages": HI, "temperature": 0}
    bodies = [{**base, field: value} for field in FIELDS for value in HOSTILE]
    bodies += [{**base, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", field: value}]}]}
               for field in BLOCK_FIELDS for value in HOSTILE]  # fmt: skip
    with requests.Session() as session:
        for body in bodies:
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                reply = session.post(api_url + path, data=json.dumps(body), timeout=60,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
                assert reply.status_code < 500, (path, body, reply.text[:300])
                if reply.status_code >= 400:
                    message = anthropic_error(reply, reply.status_code, reply.json()["error"]["type"])
                    assert message and "Traceback" not in message and "/work/" not in message


def test_the_sdk_raises_its_own_errors(claude):
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error" and missing.value.type == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.count_tokens(model="tiny-text", messages=[])
    reply = requests.post(str(claude.base_url.join("/v1/messages")), data=b"{not json", timeout=30)
    assert "must be a JSON object" in anthropic_error(reply, 400, "invalid_request_error")


def test_other_paths_and_methods_answer_in_anthropic_shape_too(api_url, text_worker):
    assert "no such endpoint" in anthropic_error(requests.post(api_url + "/v1/messages/batches", json={}, timeout=30),
                                                 404, "not_found_error")  # fmt: skip
    wrong = requests.get(api_url + "/v1/messages", timeout=30)
    anthropic_error(wrong, 405, "invalid_request_error")
    assert wrong.headers["Allow"] == "POST"


def test_a_failure_mid_stream_is_an_error_event(claude, ctx):
    with claude.messages.create(
        model="tiny-text", max_tokens=2000, messages=HI, stream=True, extra_body=GREEDY
    ) as stream, pytest.raises(anthropic.APIStatusError) as ended:  # fmt: skip
        for event in stream:
            if event.type == "content_block_delta":
                cancel_job(ctx, stream.response.headers["X-Request-Id"].removeprefix("msg_"))
    assert ended.value.body["type"] == "error" and ended.value.body["error"]["type"] == "overloaded_error"


KEY = "sk-test-anthropic-key-0123456789"


def test_api_keys_come_as_x_api_key_or_bearer_and_failures_in_anthropic_shape(stack, text_worker):
    proc, url = stack.start_api(API_KEYS=KEY)
    try:
        body = {"model": "tiny-text", "max_tokens": 2, "messages": HI, **GREEDY}
        good = requests.post(url + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=30)
        assert good.status_code == 200 and good.json()["usage"]["output_tokens"] == 2
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "anthropic-beta": "anything"}
        count = requests.post(
            url + "/v1/messages/count_tokens", json={"model": "tiny-text", "messages": HI}, headers=headers, timeout=30
        )
        assert count.status_code == 200 and count.json()["input_tokens"] > 0
        assert sdk(url, api_key=KEY).messages.create(model="tiny-text", max_tokens=2, messages=HI).usage.output_tokens
        with pytest.raises(anthropic.AuthenticationError) as refused:
            sdk(url, api_key="sk-wrong").messages.create(model="tiny-text", max_tokens=2, messages=HI)
        assert refused.value.body["error"]["type"] == "authentication_error"
        missing = requests.post(url + "/v1/messages", json=body, timeout=30)
        assert "x-api-key" in anthropic_error(missing, 401, "authentication_error")
        wrong = requests.post(url + "/v1/messages/count_tokens", json=body, headers={"x-api-key": "nope"}, timeout=30)
        anthropic_error(wrong, 401, "authentication_error")
        chat = requests.post(url + "/v1/chat/completions", json={"model": "tiny-text", "messages": HI}, timeout=30)
        assert chat.status_code == 401 and chat.json()["error"]["code"] == "missing_api_key"  # OpenAI's shape there
    finally:
        proc.stop()


# --- cancellation -----------------------------------------------------------------------------


def test_a_client_that_disconnects_cancels_its_job(api_url, text_worker, conn):
    body = {"model": "tiny-text", "max_tokens": 2000, "messages": HI, "stream": True, **GREEDY}
    reply = requests.post(api_url + "/v1/messages", json=body, stream=True, timeout=30)
    job_id = reply.headers["X-Request-Id"].removeprefix("msg_")
    for line in reply.iter_lines(decode_unicode=True):
        if line.startswith("event: content_block_delta"):
            break
    reply.close()
    wait_until(lambda: Job.fetch(job_id, connection=conn).get_status() == JobStatus.CANCELED, 15, "job canceled")
    try:
        requests.post(api_url + "/v1/messages", json={**body, "stream": False}, timeout=0.5)
        raise AssertionError("the request should outlast the client's timeout")
    except requests.Timeout:
        pass


def test_a_queued_message_pings_and_leaves_the_queue_when_its_client_goes(stack, api_url, models_dir, conn):
    model = alias(models_dir, "tiny-one-slot-messages", target=SLOW)
    worker = stack.start_worker(model, WORKER_CAPACITY=1)
    try:
        body = {"model": model, "max_tokens": 2000, "messages": HI, "stream": True, **GREEDY}
        busy = requests.post(api_url + "/v1/messages", json=body, stream=True, timeout=30)
        busy_lines = busy.iter_lines(decode_unicode=True)
        next(line for line in busy_lines if line.startswith("event: content_block_delta"))
        waiting = requests.post(api_url + "/v1/messages", json=body, stream=True, timeout=30)
        waiting_id = waiting.headers["X-Request-Id"].removeprefix("msg_")
        assert next(waiting.iter_lines(decode_unicode=True)) == "event: ping"
        assert Job.fetch(waiting_id, connection=conn).get_status() == JobStatus.QUEUED
        waiting.close()
        wait_until(lambda: Job.fetch(waiting_id, connection=conn).get_status() == JobStatus.CANCELED, 15, "canceled")
        busy.close()
    finally:
        worker.stop()
