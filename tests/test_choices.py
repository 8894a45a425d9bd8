"""`n` > 1 with the official client: n choices, each its own sequence in the batch, indexed,
streamed with their `index`, usage as OpenAI counts it (the prompt once); seeded choices are
reproducible and differ from each other; limits and what is refused."""

from __future__ import annotations

import openai
import pytest

HI = [{"role": "user", "content": "Tell me a story."}]


def collect(stream) -> tuple[dict[int, str], dict[int, str], dict | None]:
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    return texts, finishes, usage


def test_n_choices_streamed_and_not(client):
    args = dict(model="tiny-text", messages=HI, n=3, max_tokens=8, temperature=1.0, seed=7)
    plain = client.chat.completions.create(**args)
    assert [c.index for c in plain.choices] == [0, 1, 2]
    texts = [c.message.content for c in plain.choices]
    assert len(set(texts)) > 1  # seeds 7, 8, 9: different samples
    one = client.chat.completions.create(**{**args, "n": 1})
    assert plain.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert one.choices[0].message.content == texts[0]  # choice 0 is the request's seed
    assert plain.usage.completion_tokens >= one.usage.completion_tokens + 2
    streamed, finishes, usage = collect(
        client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert [streamed[i] for i in range(3)] == texts
    assert finishes == {c.index: c.finish_reason for c in plain.choices}
    assert usage.completion_tokens == plain.usage.completion_tokens and usage.prompt_tokens == plain.usage.prompt_tokens


def test_n_limits(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-text", messages=HI, n=9, max_tokens=2)
    assert refused.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-text", messages=HI, n=2, max_tokens=2, store=True)
    assert refused.value.body["param"] == "store"
