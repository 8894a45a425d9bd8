"""Reasoning end to end (issue 14): `tiny-think` is a tiny random model whose template opens a
thinking block as Qwen3's does. The thinking comes back as `reasoning_content` (its own SSE
deltas), never in `content`; `max_reasoning_tokens` ends it cleanly; the switch and
`reasoning_effort: none` turn it off; a response_format constrains the answer after the
thinking; usage counts reasoning tokens; streamed equals not."""

from __future__ import annotations

import pytest

from .support import client_for

MODEL = "tiny-think"
ASK = [{"role": "user", "content": "Think, then answer."}]


@pytest.fixture(scope="module")
def client(api_url, stack, models_dir):
    proc = stack.start_worker(MODEL)
    yield client_for(api_url)
    proc.stop()


EXTENSIONS = ("max_reasoning_tokens", "enable_thinking")


def ask(client, stream=False, **kw):
    extra = {k: kw.pop(k) for k in EXTENSIONS if k in kw}  # ours: the openai client sends them as extra_body
    args = dict(model=MODEL, messages=ASK, extra_body=extra, **{"max_tokens": 30, "temperature": 1.0, "seed": 3, **kw})
    if not stream:
        response = client.chat.completions.create(**args)
        message = response.choices[0].message
        return getattr(message, "reasoning_content", None), message.content, response.usage
    reasoning = content = ""
    usage = None
    for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
    return reasoning or None, content, usage


def test_a_budget_ends_thinking_and_the_answer_follows(client):
    reasoning, content, usage = ask(client, max_reasoning_tokens=5)
    assert reasoning and content and "<think>" not in content + reasoning and "</think>" not in content + reasoning
    assert usage.completion_tokens_details.reasoning_tokens == 6  # five, then the closing token
    streamed = ask(client, stream=True, max_reasoning_tokens=5)
    assert streamed[:2] == (reasoning, content)  # (its prompt comes from the cache: usage differs there)
    assert streamed[2].completion_tokens_details == usage.completion_tokens_details


def test_thinking_that_runs_out_of_tokens_is_all_reasoning(client):
    reasoning, content, usage = ask(client)
    assert reasoning and not content and usage.completion_tokens_details.reasoning_tokens == 30


@pytest.mark.parametrize("switch", [{"enable_thinking": False}, {"reasoning_effort": "none"}])
def test_thinking_can_be_turned_off(client, switch):
    reasoning, content, usage = ask(client, **switch)
    assert reasoning is None and content and usage.completion_tokens_details.reasoning_tokens == 0


def test_a_constrained_answer_follows_the_thinking(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"enum": ["yes", "no"]}}}
    args = {"response_format": fmt, "max_tokens": 20, "max_reasoning_tokens": 5}
    reasoning, content, usage = ask(client, **args)
    assert reasoning and content in ('"yes"', '"no"') and usage.completion_tokens_details.reasoning_tokens == 6
    assert ask(client, stream=True, **args)[:2] == (reasoning, content)
    # Thinking switched off: the constrained answer comes at once.
    reasoning, content, _ = ask(client, response_format=fmt, max_tokens=10, enable_thinking=False)
    assert reasoning is None and content in ('"yes"', '"no"')
