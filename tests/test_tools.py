"""Tool calls end to end with the official openai client (issue 14), on `tiny-tools`: a tiny
random-weight model whose chat template is the Qwen/Hermes tool format. Its calls come from
the grammar, not from the model's skill: with `required` or a named function every answer is
calls whose arguments validate; with `auto` the text never carries call markup; streamed
calls equal non-streamed ones."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .support import client_for

MODEL = "tiny-tools"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
        "additionalProperties": False}}},
]  # fmt: skip
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_worker(stack, models_dir):
    proc = stack.start_worker(MODEL)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(api_url, tools_worker):
    return client_for(api_url)


def ask(client, stream=False, **kw):
    args = dict(model=MODEL, messages=ASK, tools=TOOLS, **{"max_tokens": 400, "temperature": 1.0, **kw})
    if not stream:
        choice = client.chat.completions.create(**args).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return choice.message.content, calls, choice.finish_reason
    content, calls, finish, chunks = "", {}, None, list(client.chat.completions.create(**args, stream=True))
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for fragment in delta.tool_calls or []:
            if fragment.index not in calls:  # the first fragment of a call names it
                assert fragment.id and fragment.type == "function" and fragment.function.name
                calls[fragment.index] = [fragment.function.name, ""]
            else:
                assert fragment.id is None and not fragment.function.name
            calls[fragment.index][1] += fragment.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content or None, [tuple(calls[i]) for i in sorted(calls)], finish


def valid(calls) -> None:
    assert calls
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("seed", range(4))
def test_required_yields_valid_calls_streamed_as_not(client, seed):
    plain = ask(client, tool_choice="required", seed=seed)
    content, calls, finish = plain
    assert content is None and finish == "tool_calls"
    valid(calls)
    assert ask(client, stream=True, tool_choice="required", seed=seed) == plain


def test_a_named_function_is_the_one_called(client):
    for seed in range(3):
        _, calls, finish = ask(client, tool_choice={"type": "function", "function": {"name": "get_time"}}, seed=seed)
        assert finish == "tool_calls" and {name for name, _ in calls} == {"get_time"}
        valid(calls)


def test_parallel_calls_can_be_turned_off(client):
    for seed in range(4):
        _, calls, _ = ask(client, tool_choice="required", parallel_tool_calls=False, seed=seed)
        assert len(calls) == 1
        valid(calls)


def test_auto_text_never_carries_call_markup(client):
    seen = set()
    for seed in range(8):
        for stream in (False, True):
            content, calls, finish = ask(client, tool_choice="auto", seed=seed, stream=stream)
            assert "<tool_call>" not in (content or "") and "</tool_call>" not in (content or "")
            if calls:
                valid(calls)
                assert finish == "tool_calls"
            seen.add(bool(calls))
    assert seen == {True, False}  # the model chose both ways across these seeds


ANSWER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


def test_auto_with_a_response_format_is_calls_or_an_answer_in_that_format(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
    seen = set()
    for seed in range(8):
        plain = ask(client, tool_choice="auto", seed=seed, response_format=fmt)
        content, calls, finish = plain
        if calls:
            assert content is None and finish == "tool_calls"
            valid(calls)
        else:
            assert finish == "stop"
            jsonschema.validate(json.loads(content), ANSWER)
        assert ask(client, stream=True, tool_choice="auto", seed=seed, response_format=fmt) == plain
        seen.add(bool(calls))
    assert seen == {True, False}
    # Forced calls are calls whatever the format; with no tools the format alone applies.
    _, calls, _ = ask(client, tool_choice="required", seed=0, response_format=fmt)
    valid(calls)
    content, calls, _ = ask(client, tool_choice="none", seed=0, response_format=fmt)
    assert calls == []
    jsonschema.validate(json.loads(content), ANSWER)


def test_tool_choice_none_is_plain_text(client):
    content, calls, finish = ask(client, tool_choice="none", seed=1, max_tokens=20)
    assert calls == [] and finish == "length" and content


def test_a_conversation_with_calls_and_results_goes_on(client):
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "days": 1, "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]  # fmt: skip
    response = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=5, seed=1)
    longer = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=5, seed=1)
    assert response.usage.prompt_tokens > longer.usage.prompt_tokens + 10  # the call and its result were rendered


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"tool_choice": "required", "tools": None}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}]},
         "tools.0.function.parameters", "invalid_tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name", "invalid_value"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_a_400_naming_the_part(client, extra, param, code):
    args = {"tools": TOOLS, **extra}
    if args["tools"] is None:
        del args["tools"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **args)
    assert refused.value.body["param"] == param and refused.value.body["code"] == code


def test_a_model_without_a_tool_format_refuses_calls(api_url, text_worker):
    with pytest.raises(openai.BadRequestError) as refused:
        client_for(api_url).chat.completions.create(
            model="tiny-text", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=5
        )
    assert refused.value.body["param"] == "tools"


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "sunny"},  # no tool_call_id
        {"role": "tool", "tool_call_id": "call_1"},  # no content
        {"role": "user", "content": "hi", "tool_call_id": "call_1"},
        {"role": "user", "content": "hi", "tool_calls": [{"id": "c", "type": "function",
                                                           "function": {"name": "f", "arguments": "{}"}}]},
    ],
)  # fmt: skip
def test_misplaced_tool_fields_are_a_400(client, message):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[*ASK, message], tools=TOOLS, max_tokens=5)
    assert refused.value.body["param"] == "messages.1"


def test_batch_lines_carry_their_calls_and_schemas(client):
    """Issue 14, everywhere a chat goes: a Batch API line's tool calls and a line's schema."""
    from .test_batches import jsonl, wait_batch

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}  # fmt: skip
    bodies = {
        "call": {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 300,
                 "seed": 1},
        "json": {"model": MODEL, "messages": ASK, "max_tokens": 50, "seed": 1,
                 "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}},
    }  # fmt: skip
    lines = [{"custom_id": k, "method": "POST", "url": "/v1/chat/completions", "body": b} for k, b in bodies.items()]
    upload = client.files.create(file=jsonl(lines), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_batch(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 2, batch
    output = {
        json.loads(x)["custom_id"]: json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()
    }
    choice = output["call"]["response"]["body"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    valid([(c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]])
    jsonschema.validate(json.loads(output["json"]["response"]["body"]["choices"][0]["message"]["content"]), schema)


def test_answers_with_calls_match_the_openapi_document(api_url, client):
    """/openapi.json describes tool calls in answers and chunks (refs resolved in the document)."""
    import requests

    doc = requests.get(api_url + "/openapi.json", timeout=10).json()

    def check(body: dict, name: str) -> None:
        jsonschema.validate(body, {**doc["components"]["schemas"][name], "components": doc["components"]})

    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 300, "seed": 2}
    answer = requests.post(api_url + "/v1/chat/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["message"]["tool_calls"]
    check(answer, "ChatCompletion")
    stream = requests.post(api_url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60).text
    chunks = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    for chunk in chunks:
        check(chunk, "ChatCompletionChunk")
