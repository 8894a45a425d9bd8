"""Structured outputs end to end with the official openai client (issue 14): every schema of
the corpus yields JSON that validates, streamed and not, on a tiny random-weight model — so
the grammar, not the model, makes it valid; `json_object` yields an object; a schema that
cannot be enforced is a 400; constrained and unconstrained requests share a batch without
affecting each other."""

from __future__ import annotations

import json
import threading

import jsonschema
import openai
import pytest
import requests

from .structured_corpus import SCHEMAS, UNSUPPORTED
from .support import client_for

MODEL = "tiny-text"
ASK = [{"role": "user", "content": "Answer in JSON."}]
MAX_TOKENS = 1500


def schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def complete(client, fmt: dict, *, stream: bool = False, seed: int = 1, **kw) -> tuple[str, str]:
    """The answer's text and finish reason (sampled, seeded: a random model's greedy path
    would be the same few tokens for every schema)."""
    args = dict(model=MODEL, messages=ASK, response_format=fmt, max_tokens=MAX_TOKENS, temperature=1.0, seed=seed)
    if not stream:
        choice = client.chat.completions.create(**args, **kw).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = list(client.chat.completions.create(**args, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)


@pytest.fixture(scope="module")
def client(api_url, text_worker):
    return client_for(api_url)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_schema_of_the_corpus_yields_valid_json(client, name):
    schema = SCHEMAS[name]
    for stream in (False, True):
        text, finish = complete(client, schema_format(name, schema), stream=stream, seed=len(name))
        assert finish == "stop", (name, stream, finish, text[:200])
        jsonschema.validate(json.loads(text), schema)


def test_streamed_equals_not_streamed(client):
    fmt = schema_format("nested", SCHEMAS["nested"])
    assert complete(client, fmt, seed=7) == complete(client, fmt, stream=True, seed=7)


def test_json_object_yields_an_object(client):
    text, finish = complete(client, {"type": "json_object"})
    assert finish in ("stop", "length")
    if finish == "stop":  # an unbounded object may run to max_tokens on a random model
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")


def test_regex_and_grammar_extensions(client):
    text, _ = complete(client, {"type": "regex", "pattern": "[a-c]{3}-[0-9]{2}"})
    assert len(text) == 6 and text[3] == "-" and set(text[:3]) <= set("abc") and text[4:].isdigit()
    lark = 'start: "yes" | "no" | "maybe"'
    text, _ = complete(client, {"type": "grammar", "grammar": lark})
    assert text in ("yes", "no", "maybe")


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_a_schema_that_cannot_be_enforced_is_a_400(client, name):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=ASK, response_format=schema_format(name, UNSUPPORTED[name])
        )
    error = refused.value.body
    assert error["code"] == "invalid_response_format" and error["param"].startswith("response_format")


@pytest.mark.parametrize(
    "fmt, param",
    [
        ({"type": "xml"}, "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}},
            "response_format.json_schema.name",
        ),
        ({"type": "regex", "pattern": "(unclosed"}, "response_format.pattern"),
        ({"type": "grammar", "grammar": "start: undefined_rule"}, "response_format.grammar"),
    ],
)
def test_malformed_formats_are_a_400_naming_the_part(api_url, text_worker, fmt, param):
    body = {"model": MODEL, "messages": ASK, "response_format": fmt}
    response = requests.post(api_url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param), response.json()


def test_constrained_and_unconstrained_share_a_batch_without_interfering(client):
    """4 constrained + 4 unconstrained at once: the first validate, and the second give, at
    temperature 0, the same text as each alone (one request's mask never reaches another)."""
    prompts = [f"Tell me about topic {i}." for i in range(4)]

    def plain(prompt):
        return (
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=40, temperature=0
            )
            .choices[0]
            .message.content
        )

    alone = [plain(p) for p in prompts]
    results: dict[str, object] = {}

    def run(key, fn):
        results[key] = fn()

    threads = [threading.Thread(target=run, args=(f"plain{i}", lambda p=p: plain(p))) for i, p in enumerate(prompts)]
    threads += [
        threading.Thread(
            target=run, args=(f"json{i}", lambda i=i: complete(client, schema_format("flat", SCHEMAS["flat"]), seed=i))
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [results[f"plain{i}"] for i in range(4)] == alone
    for i in range(4):
        text, finish = results[f"json{i}"]
        assert finish == "stop"
        jsonschema.validate(json.loads(text), SCHEMAS["flat"])
