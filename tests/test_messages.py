"""Anthropic's Messages API end to end with the official `anthropic` client: `POST /v1/messages`
(JSON and SSE) and `/v1/messages/count_tokens` over the chat path, on real workers — tiny-text,
tiny-tools (the Qwen/Hermes tool template), tiny-think (a thinking block) and tiny-vision.
Streamed answers equal non-streamed ones at temperature 0; tool inputs validate against their
schemas; a stop sequence is reported by name; count_tokens is the prompt a real answer used.
Errors, keys and cancellation: tests/test_messages_errors.py."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import uuid

import anthropic
import jsonschema
import pytest
import requests
from PIL import Image

from api.anthropic_chat import param_name, to_chat
from api.anthropic_request import MessagesRequest
from runtime.stops import StopMatcher

from .support import VISION_PYTHON
from .test_tools import SCHEMAS
from .test_tools import TOOLS as CHAT_TOOLS

HI = [{"role": "user", "content": "hi"}]
GREEDY = {"temperature": 0}  # Anthropic's SDK has no `temperature` argument any more: extra_body
TOOLS = [  # the chat tests' tools (tests/test_tools.py), in Anthropic's shape
    {"name": t["function"]["name"], "input_schema": t["function"]["parameters"],
     **({"description": t["function"]["description"]} if "description" in t["function"] else {})}
    for t in CHAT_TOOLS
]  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def sdk(api_url: str, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api_url, api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def claude(api_url, text_worker) -> anthropic.Anthropic:
    return sdk(api_url)


@pytest.fixture(scope="module")
def tools_worker(stack, models_dir):
    proc = stack.start_worker("tiny-tools")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def think_worker(stack, models_dir):
    proc = stack.start_worker("tiny-think")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def vision_worker(stack, models_dir):
    if not (models_dir / "tiny-vision").exists():
        subprocess.run(
            [str(VISION_PYTHON), "-m", "worker_vision.tiny", str(models_dir / "tiny-vision")],
            check=True,
            capture_output=True,
        )
    proc = stack.start_vision_worker("tiny-vision")
    yield proc
    proc.stop()


def streamed(claude, **kw):
    """The raw events' types, and the SDK's message accumulated from them."""
    with claude.messages.stream(**kw) as stream:
        synthetic = ("text", "thinking", "input_json", "signature", "citation")  # the SDK's own, from deltas
        types = [event.type for event in stream if event.type not in synthetic]
        return types, stream.get_final_message()


def content(message) -> list[dict]:
    """A message's blocks as plain data (the SDK's streamed message has its own block classes)."""
    return [b.model_dump(exclude={"parsed_output"}, exclude_none=True) for b in message.content]


def total_input(message) -> int:
    usage = message.usage
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


# --- text ---------------------------------------------------------------------------------


def test_a_message_streamed_equals_the_message_created(claude):
    args = dict(model="tiny-text", max_tokens=20, messages=HI, extra_body=GREEDY)
    message = claude.messages.create(**args)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "tiny-text"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert 0 < message.usage.output_tokens <= 20 and total_input(message) > 0
    types, final = streamed(claude, **args)
    assert content(final) == content(message) and final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens and total_input(final) == total_input(message)
    middle = ["content_block_delta"] * (len(types) - 5)
    assert types == ["message_start", "content_block_start", *middle, "content_block_stop", "message_delta",
                     "message_stop"]  # fmt: skip


def test_raw_events_are_framed_as_anthropic_frames_them(api_url, text_worker):
    body = {"model": "tiny-text", "max_tokens": 5, "messages": HI, "stream": True, **GREEDY}
    reply = requests.post(api_url + "/v1/messages", json=body, timeout=60)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in reply.text.split("\n\n") if f.strip()]
    for frame in frames:
        event, data = frame.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == event[7:]
    start = json.loads(frames[0].split("\n")[1][6:])["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert reply.headers["request-id"] == reply.headers["X-Request-Id"] == start["id"]


def test_the_system_prompt_is_rendered_from_a_string_or_blocks(claude):
    def count(**kw) -> int:
        return claude.messages.count_tokens(**{"model": "tiny-text", "messages": HI, **kw}).input_tokens

    plain, system = count(), count(system="You are terse.\nAnswer in one word.")
    assert system > plain + 5
    blocks = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in one word."}]
    assert count(system=blocks) == system  # a turn's text blocks are joined with a newline
    assert count(messages=[{"role": "system", "content": blocks}, *HI]) == system  # a system turn, the same
    message = claude.messages.create(model="tiny-text", max_tokens=3, messages=HI, system=blocks, extra_body=GREEDY)
    assert message.content and total_input(message) == system


def test_count_tokens_is_the_prompt_of_the_same_request(claude):
    messages = [{"role": "user", "content": f"a question never asked before: {uuid.uuid4().hex}"}]
    counted = claude.messages.count_tokens(model="tiny-text", messages=messages, system="Be brief.").input_tokens
    message = claude.messages.create(model="tiny-text", max_tokens=2, messages=messages, system="Be brief.")
    assert total_input(message) == counted
    again = claude.messages.create(model="tiny-text", max_tokens=2, messages=messages, system="Be brief.")
    assert total_input(again) == counted  # the prompt cache read more of it this time
    assert again.usage.cache_read_input_tokens > message.usage.cache_read_input_tokens


def test_stop_sequences_name_the_one_that_ended_the_answer(claude):
    args = dict(model="tiny-text", max_tokens=40, messages=HI, extra_body=GREEDY)
    text = claude.messages.create(**args).content[0].text
    stop = text[10:13]
    assert len(stop) == 3
    cut = claude.messages.create(**args, stop_sequences=["never-appears", stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[: text.index(stop)]
    _, final = streamed(claude, **args, stop_sequences=[stop])
    assert (final.stop_reason, final.stop_sequence, content(final)) == ("stop_sequence", stop, content(cut))


def test_the_stop_matcher_knows_which_stop_matched():
    matcher = StopMatcher(["bc", "abcd", "x"])
    assert matcher.feed("za") == ("z", False) and matcher.matched is None  # "a" may begin "abcd"
    assert matcher.feed("bcd") == ("", True) and matcher.matched == "abcd"  # the earliest start wins
    matcher = StopMatcher(["ab", "abc"])
    assert matcher.feed("xabc") == ("x", True) and matcher.matched == "ab"  # of those there, the shortest


def test_an_answer_the_context_cut_short_says_so(claude):
    """The API caps max_tokens by what the prompt leaves of the context: Anthropic's
    `model_context_window_exceeded`. The answer must not end first: a format (enforced)
    asks for far more text than the context has room for."""
    prompt = [{"role": "user", "content": "x " * 1000}]
    counted = claude.messages.count_tokens(model="tiny-text", messages=prompt).input_tokens
    assert counted < 2048  # tiny-text's context
    long = {"format": {"type": "json_schema", "schema": {"type": "string", "minLength": 5000}}}
    message = claude.messages.create(
        model="tiny-text", max_tokens=2048 - counted + 50, messages=prompt, output_config=long
    )
    assert message.stop_reason == "model_context_window_exceeded"
    assert message.usage.output_tokens == 2048 - counted and message.content[0].text.startswith('"')


def test_a_prompt_longer_than_the_context_is_a_400_clients_recognise(claude):
    prompt = [{"role": "user", "content": "x " * 3000}]
    assert claude.messages.count_tokens(model="tiny-text", messages=prompt).input_tokens > 2048  # counted anyway
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as refused:
            claude.messages.create(model="tiny-text", max_tokens=5, messages=prompt, stream=stream)
        error = refused.value.body["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith("prompt is too long: ")


def test_a_request_becomes_the_chat_request_that_runs_it():
    """The translation itself (api/anthropic_chat.py), and errors told in the request's names."""
    req = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "messages": [
            {"role": "user", "content": "q1"}, {"role": "user", "content": [{"type": "text", "text": "q2"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": ""}, {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True},
                {"type": "text", "text": "and?", "cache_control": {"type": "ephemeral"}}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 4}, "output_config": {"effort": "max"},
        "stop_sequences": ["END"], "temperature": 0, "metadata": {"user_id": "u"},
    })  # fmt: skip
    body, origin = to_chat(req)
    assert body["messages"] == [
        {"role": "system", "content": "a\nb"},
        {"role": "user", "content": "q1\nq2"},
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: boom"},
        {"role": "user", "content": "and?"},
    ]  # fmt: skip
    assert origin == ["system", "messages.0", "messages.2", "messages.3", "messages.3"]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert (body["enable_thinking"], body["max_reasoning_tokens"], body["reasoning_effort"]) == (True, 4, "high")
    assert (body["stop"], body["temperature"], body["max_tokens"]) == (["END"], 0, 9)
    assert param_name("messages.4.content", origin) == "messages.3"
    assert param_name("tools.0.function.parameters", origin) == "tools.0.input_schema"
    assert param_name("stop", origin) == "stop_sequences"


# --- images, tools, thinking ----------------------------------------------------------------


def png(color=(255, 0, 0)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_block(media_type: str = "image/png", data: str | None = None) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data or png()}}


def test_an_image_reaches_a_vision_model(api_url, vision_worker):
    claude = sdk(api_url)
    with_image = [{"role": "user", "content": [image_block(), {"type": "text", "text": "What is this?"}]}]
    args = dict(model="tiny-vision", max_tokens=5, messages=with_image, extra_body=GREEDY)
    message = claude.messages.create(**args)
    assert message.content[0].type == "text" and message.usage.output_tokens > 0
    assert content(streamed(claude, **args)[1]) == content(message)
    counted = claude.messages.count_tokens(model="tiny-vision", messages=with_image).input_tokens
    text_only = claude.messages.count_tokens(model="tiny-vision", messages=[{"role": "user", "content": "What?"}])
    assert counted == total_input(message) > text_only.input_tokens


@pytest.mark.parametrize(
    "block, words",
    [
        ({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}, "remote image URLs"),
        ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "Files API"),
        (image_block("image/gif", base64.b64encode(b"GIF89a").decode()), "unsupported image type"),
        ({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}, "documents"),
    ],
)
def test_images_and_blocks_refused_say_why(api_url, vision_worker, block, words):
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk(api_url).messages.create(model="tiny-vision", max_tokens=5, messages=[{"role": "user", "content": [block]}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert words in refused.value.body["error"]["message"]


def calls(message) -> list[tuple[str, dict]]:
    found = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
    for name, arguments in found:
        jsonschema.validate(arguments, SCHEMAS[name])
    return found


def test_tool_choice_any_and_tool_yield_valid_tool_use_blocks(api_url, tools_worker):
    claude = sdk(api_url)
    args = dict(model="tiny-tools", max_tokens=300, messages=ASK, tools=TOOLS, extra_body=GREEDY)
    message = claude.messages.create(**args, tool_choice={"type": "any"})
    assert message.stop_reason == "tool_use" and calls(message)
    assert all(b.id.startswith("toolu_") for b in message.content if b.type == "tool_use")
    types, final = streamed(claude, **args, tool_choice={"type": "any"})
    assert calls(final) == calls(message) and final.stop_reason == "tool_use"
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    named = claude.messages.create(**args, tool_choice={"type": "tool", "name": "get_time"})
    assert {name for name, _ in calls(named)} == {"get_time"}
    single = {"type": "any", "disable_parallel_tool_use": True}
    assert len(calls(claude.messages.create(**args, tool_choice=single))) == 1
    none = claude.messages.create(**{**args, "max_tokens": 10}, tool_choice={"type": "none"})
    assert not calls(none) and none.stop_reason == "max_tokens"


def test_a_tool_result_goes_back_to_the_model(api_url, tools_worker):
    claude = sdk(api_url)
    first = claude.messages.create(
        model="tiny-tools", max_tokens=300, messages=ASK, tools=TOOLS, tool_choice={"type": "any"}, extra_body=GREEDY
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": b.id, "content": "sunny, 21 C"} for b in uses]
    history = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}]
    answer = claude.messages.create(model="tiny-tools", max_tokens=5, messages=history, tools=TOOLS, extra_body=GREEDY)
    assert answer.content and total_input(answer) > total_input(first) + 10  # the calls and results were rendered
    failed = [{**results[0], "is_error": True, "content": [{"type": "text", "text": "no such city"}]}]
    retried = [*history[:2], {"role": "user", "content": failed}]
    assert claude.messages.count_tokens(model="tiny-tools", messages=retried, tools=TOOLS).input_tokens > 0


def test_thinking_comes_back_as_thinking_blocks(api_url, think_worker):
    claude = sdk(api_url)
    args = dict(model="tiny-think", max_tokens=30, messages=HI, extra_body=GREEDY)
    budget = {"type": "enabled", "budget_tokens": 5}
    message = claude.messages.create(**args, thinking=budget)
    thinking, *rest = message.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature == ""
    assert "<think>" not in thinking.thinking and [b.type for b in rest] == ["text"]
    assert message.usage.output_tokens_details.thinking_tokens == 6  # five, then the closing token
    types, final = streamed(claude, **args, thinking=budget)
    assert content(final) == content(message) and types.count("content_block_start") == 2
    off = claude.messages.create(**args, thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"] and off.usage.output_tokens_details.thinking_tokens == 0
    hidden = claude.messages.create(**args, thinking={**budget, "display": "omitted"})
    assert content(hidden) == [{"type": "thinking", "thinking": "", "signature": ""}, content(message)[1]]


# --- the OpenAPI document ---------------------------------------------------------------------


def test_answers_and_events_match_the_openapi_document(api_url, tools_worker):
    doc = requests.get(api_url + "/openapi.json", timeout=10).json()
    assert {"/v1/messages", "/v1/messages/count_tokens"} <= set(doc["paths"])

    def check(body: dict, name: str) -> None:
        jsonschema.validate(body, {**doc["components"]["schemas"][name], "components": doc["components"]})

    body = {"model": "tiny-tools", "max_tokens": 300, "messages": ASK, "tools": TOOLS, "tool_choice": {"type": "any"}}
    check(requests.post(api_url + "/v1/messages", json=body, timeout=60).json(), "AnthropicMessage")
    stream = requests.post(api_url + "/v1/messages", json={**body, "stream": True}, timeout=60).text
    events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    assert {e["type"] for e in events} >= {"message_start", "content_block_delta", "message_stop"}
    for event in events:
        check(event, "AnthropicStreamEvent")
    count = requests.post(
        api_url + "/v1/messages/count_tokens", json={"model": "tiny-tools", "messages": ASK}, timeout=60
    )
    check(count.json(), "AnthropicTokenCount")
    check(requests.post(api_url + "/v1/messages", json={}, timeout=60).json(), "AnthropicError")
