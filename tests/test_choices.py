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


def test_greedy_choices_share_the_prompt_and_say_the_same(client):
    args = dict(model="tiny-text", messages=HI, max_tokens=8, temperature=0)
    three = client.chat.completions.create(**args, n=3)
    one = client.chat.completions.create(**args)
    assert [c.message.content for c in three.choices] == [one.choices[0].message.content] * 3


def test_n_limits(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-text", messages=HI, n=9, max_tokens=2)
    assert refused.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny-text", messages=HI, n=2, max_tokens=2, store=True)
    assert refused.value.body["param"] == "store"


# --- legacy completions -----------------------------------------------------------------------


def joined(stream) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    return texts, finishes


def test_a_legacy_completion_of_a_string_streamed_and_not(client):
    plain = client.completions.create(model="tiny-text", prompt="Once upon a time", temperature=0)
    assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
    assert plain.usage.completion_tokens == 16 and plain.choices[0].finish_reason == "length"  # OpenAI's default
    texts, finishes = joined(client.completions.create(model="tiny-text", prompt="Once upon a time", temperature=0,
                                                       stream=True))  # fmt: skip
    assert texts == {0: plain.choices[0].text} and finishes == {0: "length"}


def test_several_prompts_with_n_choices_each(client):
    prompts = ["The cat", "A dog barked and"]
    plain = client.completions.create(model="tiny-text", prompt=prompts, n=2, max_tokens=5, temperature=1.0, seed=3)
    assert [c.index for c in plain.choices] == [0, 1, 2, 3]  # prompt i's choice j at i * n + j
    alone = [client.completions.create(model="tiny-text", prompt=p, max_tokens=5, temperature=1.0, seed=3)
             for p in prompts]  # fmt: skip
    assert [plain.choices[0].text, plain.choices[2].text] == [a.choices[0].text for a in alone]
    assert plain.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)  # each prompt once
    texts, _ = joined(client.completions.create(model="tiny-text", prompt=prompts, n=2, max_tokens=5,
                                                temperature=1.0, seed=3, stream=True))  # fmt: skip
    assert [texts[i] for i in range(4)] == [c.text for c in plain.choices]


def test_echo_and_token_id_prompts(client):
    text = client.completions.create(model="tiny-text", prompt="Hello there", max_tokens=4, temperature=0, echo=True)
    assert text.choices[0].text.startswith("Hello there")
    ids = client.completions.create(model="tiny-text", prompt=[1, 2, 3, 4], max_tokens=4, temperature=0, echo=True)
    streamed, _ = joined(client.completions.create(model="tiny-text", prompt=[1, 2, 3, 4], max_tokens=4,
                                                   temperature=0, echo=True, stream=True))  # fmt: skip
    assert streamed[0] == ids.choices[0].text and ids.usage.prompt_tokens == 4
    nested = client.completions.create(model="tiny-text", prompt=[[1, 2, 3, 4], [5, 6]], max_tokens=4, temperature=0)
    assert len(nested.choices) == 2 and nested.usage.prompt_tokens == 6


def test_legacy_logprobs(client):
    response = client.completions.create(model="tiny-text", prompt="Hi", max_tokens=6, temperature=0, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == 6
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    # Greedy: each token is its step's most likely (tokens may be pieces of one character).
    assert all(max(top.values()) == pytest.approx(lp, abs=1e-4)
               for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True))  # fmt: skip
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(6)]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 3}, None),
        ({"echo": True, "logprobs": 1}, None),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2**30]}, "prompt"),  # past the vocabulary: the worker refuses it
        ({"logprobs": 6}, "logprobs"),
        ({"n": 9}, "n"),
    ],
)
def test_legacy_refusals(client, extra, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(**{"model": "tiny-text", "prompt": "x", "max_tokens": 2, **extra})
    if param:
        assert refused.value.body["param"] == param
