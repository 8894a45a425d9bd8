"""Chat completions end to end: the official openai client → gunicorn → Redis → a real
tiny-text worker process → token stream → back."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from .support import wait_until

MODEL = "tiny-text"
HELLO = [{"role": "user", "content": "Hello there"}]


def ask(client, **kw):
    return client.chat.completions.create(model=MODEL, **{"messages": HELLO, "temperature": 0, **kw})


def stream_text(client, **kw) -> tuple[str, list]:
    chunks = list(ask(client, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_non_streamed_completion_is_shaped_like_openai(client):
    response = ask(client, max_tokens=12)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == MODEL
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 12
    assert response.usage.prompt_tokens > 3
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_streamed_text_equals_non_streamed_text_and_usage_agrees(client):
    full = ask(client, max_tokens=30)
    text, chunks = stream_text(client, max_tokens=30, stream_options={"include_usage": True})
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (full.usage.prompt_tokens, full.usage.completion_tokens)


def test_stream_without_include_usage_has_no_usage_chunk(client):
    _, chunks = stream_text(client, max_tokens=5)
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_max_completion_tokens_wins_over_max_tokens(client):
    response = ask(client, max_tokens=20, max_completion_tokens=4)
    assert response.usage.completion_tokens == 4


def test_stop_sequence_ends_output_before_it(client):
    text = ask(client, max_tokens=40).choices[0].message.content
    stop = text[10:13]
    assert len(stop) == 3
    cut = ask(client, max_tokens=40, stop=[stop, "never-appears"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    streamed, _ = stream_text(client, max_tokens=40, stop=stop)
    assert streamed == text[: text.index(stop)]


def test_multi_turn_and_text_parts_shape_the_prompt(client):
    plain = ask(client, max_tokens=3)
    parts = ask(
        client,
        max_tokens=3,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "And again?"},
        ],
    )
    assert parts.usage.prompt_tokens > plain.usage.prompt_tokens


def test_seed_makes_sampling_repeatable(client):
    a = ask(client, max_tokens=15, temperature=1.0, seed=7).choices[0].message.content
    b = ask(client, max_tokens=15, temperature=1.0, seed=7).choices[0].message.content
    assert a == b


def test_sampling_parameters_are_accepted_and_change_output(client):
    greedy = ask(client, max_tokens=20).choices[0].message.content
    penalised = (
        ask(
            client,
            max_tokens=20,
            frequency_penalty=2.0,
            presence_penalty=2.0,
            extra_body={"repetition_penalty": 1.5, "top_k": 5, "min_p": 0.05},
        )
        .choices[0]
        .message.content
    )
    assert penalised != greedy
    sampled = ask(client, max_tokens=20, temperature=1.5, top_p=0.9, seed=1)
    assert sampled.usage.completion_tokens == 20


def test_logit_bias_forces_a_token(client):
    response = ask(client, max_tokens=5, logit_bias={"65": 100})
    tokens = ask(client, max_tokens=5, logit_bias={"65": 100}, logprobs=True).choices[0].logprobs.content
    assert len({t.token for t in tokens}) == 1
    assert response.choices[0].message.content == tokens[0].token * 5


def test_logprobs_and_top_logprobs(client):
    response = ask(client, max_tokens=6, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # greedy decoding picks the most likely token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
    _, chunks = stream_text(client, max_tokens=4, logprobs=True, top_logprobs=2)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(streamed) == 4


def test_models_lists_live_workers(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_multibyte_characters_are_never_split(client):
    text, chunks = stream_text(client, max_tokens=60, temperature=1.0, seed=3)
    for chunk in chunks:
        content = chunk.choices[0].delta.content if chunk.choices else None
        if content:
            content.encode("utf-8")  # a lone surrogate or split sequence would fail here
    assert text == ask(client, max_tokens=60, temperature=1.0, seed=3).choices[0].message.content


def test_only_stored_completions_stay_an_hour(api_url, text_worker, conn, keys):
    """Hardening II, case 10: every answer was kept RESULT_TTL (1 h), ~17 KB each, so a busy
    server's Redis grew by tens of MB a minute. Now `store: true` keeps it (rq record and
    stream) and can be read back; any other answer leaves nothing once its client has it, as
    JSON or as a stream (rq drops the job; the relay deletes the stream after sending it)."""
    body = {"model": "tiny-text", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "store": True}
    job_id = requests.post(api_url + "/v1/chat/completions", json=body, timeout=30).json()["id"][9:]
    assert requests.get(f"{api_url}/v1/chat/completions/chatcmpl-{job_id}", timeout=10).status_code == 200
    assert 3000 < conn.ttl(keys.stream(job_id)) <= 3600 and 3000 < conn.ttl(f"rq:job:{job_id}") <= 3600

    del body["store"]
    job_id = requests.post(api_url + "/v1/chat/completions", json=body, timeout=30).json()["id"][9:]
    chunks = requests.post(api_url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    streamed_id = json.loads(chunks.text.split("data: ", 2)[1].split("\n")[0])["id"][9:]
    assert chunks.text.rstrip().endswith("data: [DONE]")
    for unstored in (job_id, streamed_id):
        keys_left = [keys.stream(unstored), f"rq:job:{unstored}", f"rq:results:{unstored}"]
        wait_until(lambda: not conn.exists(*keys_left), 5, "nothing kept of a delivered unstored answer")  # noqa: B023
        gone = requests.get(f"{api_url}/v1/chat/completions/chatcmpl-{unstored}", timeout=10)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "completion_not_found"
