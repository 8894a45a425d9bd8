"""The Responses API end to end with the official `openai` client: plain, streamed (event
order, increasing sequence numbers, the same text as not streamed), tools and a function-call
round trip, `text.format`, `previous_response_id`, background → poll, a background stream
dropped and resumed with `starting_after` (every event once), cancel, delete, input items, an
API restarted while a background response runs, and what is refused."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests

from .support import SLOW, alias, client_for, wait_until
from .test_tools import SCHEMAS, TOOLS

ASK = "Say something."
TERMINAL = {"completed", "incomplete", "failed", "cancelled"}


@pytest.fixture(scope="module")
def tools_client(api_url, stack):
    proc = stack.start_worker("tiny-tools")
    yield client_for(api_url)
    proc.stop()


def stream_events(client, **kw) -> list:
    return list(client.responses.create(stream=True, **kw))


def test_a_plain_response_and_its_stream_say_the_same(client):
    plain = client.responses.create(model="tiny-text", input=ASK, max_output_tokens=12, temperature=0)
    assert plain.status == "incomplete" and plain.incomplete_details.reason == "max_output_tokens"
    assert plain.output_text and plain.output[0].type == "message" and plain.output[0].role == "assistant"
    assert plain.usage.output_tokens == 12 and plain.usage.input_tokens > 0
    assert plain.usage.total_tokens == plain.usage.input_tokens + 12
    events = stream_events(client, model="tiny-text", input=ASK, max_output_tokens=12, temperature=0)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text == events[-1].response.output_text


def test_instructions_and_message_items(client):
    short = client.responses.create(model="tiny-text", input=ASK, max_output_tokens=1)
    longer = client.responses.create(
        model="tiny-text",
        instructions="You are terse.",
        max_output_tokens=1,
        input=[{"role": "user", "content": [{"type": "input_text", "text": ASK}]}],
    )
    assert longer.usage.input_tokens > short.usage.input_tokens
    assert longer.instructions == "You are terse."


def test_text_format_json_schema_validates(client):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["n", "ok"],
        "additionalProperties": False,
    }
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
    for seed in range(3):
        response = client.responses.create(
            model="tiny-text", input=ASK, text=fmt, max_output_tokens=60, temperature=1.0, extra_body={"seed": seed}
        )
        assert response.status == "completed"
        jsonschema.validate(json.loads(response.output_text), schema)
        assert response.text.format.type == "json_schema"


def test_a_function_call_round_trip(tools_client):
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    first = tools_client.responses.create(
        model="tiny-tools",
        input="Weather in Paris?",
        tools=tools,
        tool_choice="required",
        temperature=1.0,
        extra_body={"seed": 1},
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.status == "completed"
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    streamed = stream_events(
        tools_client,
        model="tiny-tools",
        input="Weather in Paris?",
        tools=tools,
        tool_choice="required",
        temperature=1.0,
        extra_body={"seed": 1},
    )
    done = [e.item for e in streamed if e.type == "response.output_item.done"]
    assert [(c.name, c.arguments) for c in done] == [(c.name, c.arguments) for c in calls]
    deltas = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert deltas == "".join(c.arguments for c in calls)
    # The results go back, by id, and the conversation goes on from the stored response.
    results = [{"type": "function_call_output", "call_id": c.call_id, "output": '{"temp": 21}'} for c in calls]
    second = tools_client.responses.create(
        model="tiny-tools",
        previous_response_id=first.id,
        input=results,
        tools=tools,
        tool_choice="none",
        max_output_tokens=5,
    )
    assert second.previous_response_id == first.id
    alone = tools_client.responses.create(
        model="tiny-tools", input="Weather in Paris?", tools=tools, tool_choice="none", max_output_tokens=5
    )
    assert second.usage.input_tokens > alone.usage.input_tokens + 20  # the calls and their results were rendered
    items = tools_client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"] * len(calls)


@pytest.fixture(scope="module")
def think_client(api_url, stack):
    proc = stack.start_worker("tiny-think")
    yield client_for(api_url)
    proc.stop()


def test_reasoning_comes_back_as_a_reasoning_item(think_client):
    args = dict(model="tiny-think", input=ASK, max_output_tokens=10, temperature=0)
    response = think_client.responses.create(**args)
    (item,) = response.output  # it thinks all the way: one reasoning item, no message
    assert item.type == "reasoning" and item.summary == [] and item.content[0].type == "reasoning_text"
    assert item.content[0].text and response.usage.output_tokens_details.reasoning_tokens == 10
    events = stream_events(think_client, **args)
    text = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert text == item.content[0].text
    off = think_client.responses.create(**{**args, "reasoning": {"effort": "none"}})
    assert [i.type for i in off.output] == ["message"] and off.usage.output_tokens_details.reasoning_tokens == 0


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model="tiny-text", input=ASK, max_output_tokens=8, temperature=0)
    second = client.responses.create(
        model="tiny-text", input="More.", previous_response_id=first.id, max_output_tokens=8, temperature=0
    )
    alone = client.responses.create(model="tiny-text", input="More.", max_output_tokens=8, temperature=0)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens - 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="tiny-text", input="x", previous_response_id="resp_" + "0" * 32)
    assert refused.value.body["param"] == "previous_response_id"


def test_background_then_poll_and_retrieve(client):
    response = client.responses.create(
        model="tiny-text", input=ASK, background=True, max_output_tokens=20, temperature=0
    )
    assert response.status == "queued" and response.background
    done = wait_until(lambda: (r := client.responses.retrieve(response.id)).status in TERMINAL and r, 30, "completion")
    assert done.status == "incomplete" and done.usage.output_tokens == 20 and done.output_text


def test_a_dropped_background_stream_resumes_with_every_event_once(api_url, stack, models_dir):
    model = alias(models_dir, "tiny-resume", target=SLOW)
    worker = stack.start_worker(model)
    try:
        client = client_for(api_url)
        stream = client.responses.create(
            model=model, input=ASK, background=True, stream=True, max_output_tokens=40, temperature=0
        )
        first_part = []
        for event in stream:
            first_part.append(event)
            if event.type == "response.output_text.delta" and len(first_part) > 8:
                break
        stream.close()  # the client drops off; the background job goes on
        response_id = first_part[0].response.id
        rest = list(client.responses.retrieve(response_id, stream=True, starting_after=first_part[-1].sequence_number))
        events = first_part + rest
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.incomplete"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == client.responses.retrieve(response_id).output_text
        replay = list(client.responses.retrieve(response_id, stream=True))  # from the start, after the end
        assert [e.model_dump() for e in replay] == [e.model_dump() for e in events]
    finally:
        worker.stop()


def test_cancel_and_delete(api_url, stack, models_dir, text_worker):
    model = alias(models_dir, "tiny-cancel-bg", target=SLOW)
    worker = stack.start_worker(model)
    try:
        client = client_for(api_url)
        response = client.responses.create(model=model, input=ASK, background=True, max_output_tokens=2000)
        wait_until(lambda: client.responses.retrieve(response.id).status == "in_progress", 30, "the job starts")
        cancelled = client.responses.cancel(response.id)
        assert cancelled.status == "cancelled"
        assert client.responses.retrieve(response.id).status == "cancelled"
        client.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        plain = client.responses.create(model="tiny-text", input=ASK, max_output_tokens=2)
        with pytest.raises(openai.BadRequestError):  # only background responses are cancelled by id
            client.responses.cancel(plain.id)
    finally:
        worker.stop()


def test_an_api_restart_does_not_stop_a_background_response(stack, models_dir):
    model = alias(models_dir, "tiny-restart-bg", target=SLOW)
    worker = stack.start_worker(model)
    api, url = stack.start_api()
    try:
        response = client_for(url).responses.create(
            model=model, input=ASK, background=True, max_output_tokens=60, temperature=0
        )
        wait_until(lambda: client_for(url).responses.retrieve(response.id).status == "in_progress", 30, "start")
        api.stop()
        _, url = stack.start_api()
        done = wait_until(
            lambda: (r := client_for(url).responses.retrieve(response.id)).status in TERMINAL and r, 60, "the end"
        )
        assert done.status == "incomplete" and done.usage.output_tokens == 60
    finally:
        worker.stop()


def test_unstored_responses_are_not_kept(client):
    response = client.responses.create(model="tiny-text", input=ASK, max_output_tokens=2, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [{"type": "web_search"}]}, "tools.0"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"background": True, "store": False}, None),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"not": {}}}}}, "text.format"),
    ],
)
def test_what_cannot_be_done_is_refused(api_url, text_worker, extra, param):
    body = {"model": "tiny-text", "input": ASK, **extra}
    reply = requests.post(api_url + "/v1/responses", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert (error["param"] or "").startswith(param), error
