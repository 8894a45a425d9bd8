"""Every bad request gets an OpenAI-shaped JSON error with the right status — never a
traceback, a path or a hang."""

from __future__ import annotations

import json

import pytest
import requests

from .support import ROOT

GOOD = {"model": "tiny-text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(api_url, body, **kw):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(
        api_url + "/v1/chat/completions", data=data, timeout=30, headers={"Content-Type": "application/json"}, **kw
    )


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"] and str(ROOT) not in error["message"]
    if code:
        assert error["code"] == code
    if param:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "change, param",
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "audio", "x": 1}]}]}, "messages.0.content"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"n": 9}, "n"),  # MAX_N is 8
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 1000}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ({"stream": "yes please"}, "stream"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(api_url, text_worker, change, param):
    body = {**GOOD, **change}
    if change.get("model", 1) is None:
        del body["model"]
    error = assert_error(post(api_url, body), 400, param=param)
    assert error["type"] == "invalid_request_error" and error["param"] == param  # never null (Hardening II)


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", "null", ""])
def test_malformed_bodies_are_400(api_url, raw):
    assert_error(post(api_url, raw), 400, code="invalid_json")


def test_unknown_model_is_404_naming_the_live_ones(api_url, text_worker):
    error = assert_error(post(api_url, {**GOOD, "model": "gpt-17"}), 404, code="model_not_found", param="model")
    assert "tiny-text" in error["message"]


def test_images_for_a_text_model_are_400(api_url, text_worker):
    body = {
        **GOOD,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    }
    error = assert_error(post(api_url, body), 400, code="images_not_supported")
    assert "images" in error["message"]


def test_oversized_body_is_413(api_url):
    huge = {**GOOD, "messages": [{"role": "user", "content": "x" * (17 * 1024 * 1024)}]}
    assert_error(post(api_url, huge), 413)


def test_prompt_longer_than_the_context_is_400(api_url, text_worker):
    long = {**GOOD, "messages": [{"role": "user", "content": "the answer " * 3000}]}
    error = assert_error(post(api_url, long), 400, code="context_length_exceeded")
    assert "context length" in error["message"] and error["param"] == "messages"  # as OpenAI names it


def test_logit_bias_outside_the_vocabulary_is_400(api_url, text_worker):
    error = assert_error(post(api_url, {**GOOD, "logit_bias": {"999999": 5}}), 400, code="invalid_value")
    assert error["param"] == "logit_bias"  # the worker's refusals name their parameter too


def test_unknown_routes_and_methods_are_json_errors(api_url):
    assert_error(requests.get(api_url + "/v1/nothing", timeout=5), 404)
    assert_error(requests.get(api_url + "/v1/chat/completions", timeout=5), 405)


def test_redis_down_gives_503_quickly_and_recovery_after(stack, tmp_path):
    from .support import RedisServer, free_port

    own_redis = RedisServer(free_port(), tmp_path / "redis").start()
    proc, url = stack.start_api(REDIS_URL=own_redis.url)
    try:
        assert requests.get(url + "/health", timeout=5).status_code == 200
        own_redis.stop()
        health = requests.get(url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["redis"] is False
        response = post(url, GOOD)
        error = assert_error(response, 503, code="redis_unavailable")
        assert "redis://" not in error["message"]
        assert response.elapsed.total_seconds() < 5
        assert_error(requests.get(url + "/v1/models", timeout=10), 503)
        own_redis.start()
        assert requests.get(url + "/health", timeout=10).json()["redis"] is True
    finally:
        proc.stop()
        own_redis.stop()
