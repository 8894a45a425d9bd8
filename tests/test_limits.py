"""Request limits over real HTTP: the model's context (published in /v1/models, enforced by
the worker, a real 400 for streaming clients too, max_tokens capped by what is left), the
configurable caps on messages, stop sequences and logit_bias, and sampling values at the
edges of their ranges, which must never break the batch they run in."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from .support import HI, client_for
from .test_errors import GOOD, assert_error, post

CONTEXT = 2048
"""tiny-text's max_position_embeddings (worker_text/tiny.py)."""
EOS = "2"
"""tiny-text's end-of-sequence id: biased away where a test needs the whole budget used."""


def test_models_publish_their_context_length(client):
    cards = {m.id: m for m in client.models.list().data}
    assert cards["tiny-text"].context_length == CONTEXT


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_a_real_400(api_url, text_worker, stream):
    body = {**GOOD, "stream": stream, "messages": [{"role": "user", "content": "x" * (CONTEXT + 50)}]}
    error = assert_error(post(api_url, body), 400, code="context_length_exceeded")
    assert str(CONTEXT) in error["message"]  # both numbers: the context and the prompt's tokens


def test_streaming_clients_get_the_400_from_the_official_client(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny-text", stream=True, max_tokens=2, messages=[{"role": "user", "content": "x" * (CONTEXT + 50)}]
        )
    assert caught.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_beyond_the_context_is_capped_to_what_is_left(client, stream):
    messages = [{"role": "user", "content": "x" * (CONTEXT - 30)}]
    kw = dict(model="tiny-text", messages=messages, temperature=0, max_tokens=10**9, logit_bias={EOS: -100})
    if stream:
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        usage, finish = (
            chunks[-1].usage,
            next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason),
        )
    else:
        reply = client.chat.completions.create(**kw)
        usage, finish = reply.usage, reply.choices[0].finish_reason
    assert finish == "length"
    assert usage.total_tokens == CONTEXT and 0 < usage.completion_tokens < 40


@pytest.mark.parametrize(
    "change, param",
    [
        ({"messages": HI * 2049}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "s" * 513}, "stop"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"logit_bias": {"²": 1}}, "logit_bias"),
        ({"logit_bias": {"9" * 5000: 1}}, "logit_bias"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"repetition_penalty": 0.001}, "repetition_penalty"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ],
)
def test_limits_are_400_naming_the_field(api_url, text_worker, change, param):
    assert_error(post(api_url, {**GOOD, **change}), 400, code="invalid_value", param=param)


def test_limits_are_settings(stack, text_worker):
    api, url = stack.start_api(MAX_MESSAGES=2, MAX_STOP_SEQUENCES=8, MAX_LOGIT_BIAS=2)
    try:
        assert_error(post(url, {**GOOD, "messages": HI * 3}), 400, param="messages")
        assert post(url, {**GOOD, "messages": HI * 2, "stop": list("abcdefgh")}).status_code == 200
        assert_error(post(url, {**GOOD, "logit_bias": {"1": 1, "2": 1, "3": 1}}), 400, param="logit_bias")
        spec = requests.get(url + "/openapi.json", timeout=10).json()
        request = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
        assert request["messages"]["maxItems"] == 2
    finally:
        api.stop()


EDGES = [
    {"top_k": 10**9, "temperature": 1},  # more than the vocabulary: no top-k at all
    {"temperature": 1e-300},  # 1/temperature overflows float32: sampled greedily
    {"temperature": 5e-324, "top_p": 5e-324},
    {"seed": -1, "temperature": 1},
    {"seed": 2**64 - 1, "temperature": 1},
    {"seed": -(2**63), "temperature": 1, "top_k": 10**9},
    {"repetition_penalty": 0.01, "logprobs": True, "top_logprobs": 20},
    {"min_p": 1, "temperature": 2, "presence_penalty": 2, "frequency_penalty": -2},
    {"logit_bias": {"0": 100, "1": -100}, "logprobs": True, "top_logprobs": 3},
]


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_sampling_at_the_edges_of_its_ranges_never_breaks_a_batch(api_url, client):
    """One bad row would fail the engine step, and with it every job in the batch: each of
    these runs beside the others and a plain request, and all of them answer."""

    def run(extra):
        return post(api_url, {**GOOD, "max_tokens": 6, **extra})

    with ThreadPoolExecutor(len(EDGES) + 1) as pool:
        plain = pool.submit(client.chat.completions.create, model="tiny-text", messages=HI, max_tokens=6, temperature=0)
        responses = list(pool.map(run, EDGES))
        assert plain.result().usage.completion_tokens >= 1
    for extra, response in zip(EDGES, responses, strict=True):
        assert response.status_code == 200, (extra, response.text)
        body = json.loads(response.text, parse_constant=_not_json)  # no NaN or Infinity in logprobs
        assert body["usage"]["completion_tokens"] >= 1
    assert (
        client_for(api_url)
        .chat.completions.create(model="tiny-text", messages=HI, max_tokens=2, temperature=0)
        .usage.completion_tokens
        == 2
    )
