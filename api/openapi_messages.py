"""The OpenAPI description of Anthropic's Messages API (api/messages.py): its two operations,
their request bodies from the pydantic models that validate them (names prefixed
`Anthropic`, so they never meet the chat request's), and the answers' shapes, written by
hand next to each other as api/anthropic_shape.py builds them. `api.openapi.build` merges
these in."""

from __future__ import annotations

from contract.settings import Settings

from .anthropic_request import MessagesInput, MessagesRequest
from .anthropic_shape import ERROR_TYPES
from .openapi_builders import (
    ERROR_TEXT,
    INT,
    REF,
    REQUEST_ID,
    STR,
    OperationScope,
    array,
    json_response,
    nullable,
    obj,
    operation,
    ref,
)

PREFIX = "Anthropic"
OBJECT = {"type": "object"}
SECURITY_SCHEMES = {
    "xApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "A key from API_KEYS / API_KEYS_FILE, as Anthropic's clients send it",
    }
}
STATUSES = (400, 401, 403, 404, 413, 429, 500, 503, 504)
STREAM_EVENTS = ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                 "message_delta", "message_stop", "ping", "error"]  # fmt: skip


def paths(settings: Settings) -> dict:
    # Either header carries the key (api/apikeys.py).
    keyed: list[dict[str, list[str]]] = [{"apiKey": []}, {"xApiKey": []}]
    security = keyed if settings.api_keys_configured else [{}]
    scope: OperationScope = dict(tag="Anthropic-compatible", security=security)
    errors = {str(s): json_response(ERROR_TEXT[s], ref("AnthropicError")) for s in STATUSES}
    message = {
        "description": "The message, or its stream of events when `stream` is true",
        "headers": REQUEST_ID,
        "content": {
            "application/json": {"schema": ref("AnthropicMessage")},
            "text/event-stream": {"schema": ref("AnthropicEvent")},
        },
    }
    return {
        "/v1/messages": {
            "post": operation(
                "Create a message (Anthropic's Messages API)",
                {"200": message, **errors},
                body=ref("AnthropicMessagesRequest"),
                description=(
                    'Anthropic\'s Messages API over the chat path (docs/API.md, "Messages (Anthropic)"). '
                    'Errors are Anthropic\'s `{"type": "error", "error": {type, message}}`; a failure '
                    "after the stream started is an `error` event."
                ),
                **scope,
            )
        },
        "/v1/messages/count_tokens": {
            "post": operation(
                "Count a message's input tokens",
                {
                    "200": json_response(
                        "The prompt's tokens, counted by the model's worker", ref("AnthropicTokenCount")
                    ),
                    **errors,
                },  # fmt: skip
                body=ref("AnthropicCountTokensRequest"),
                **scope,
            )
        },
    }


def schemas(settings: Settings) -> dict:
    components = _request_schemas(settings)
    usage = obj(
        ["input_tokens", "output_tokens"],
        input_tokens=INT,
        output_tokens=INT,
        cache_creation_input_tokens=INT,
        cache_read_input_tokens=INT,
        output_tokens_details=obj(["thinking_tokens"], thinking_tokens=INT),
    )
    block = {
        "anyOf": [
            obj(["type", "text"], type={"const": "text"}, text=STR),
            obj(["type", "thinking", "signature"], type={"const": "thinking"}, thinking=STR, signature=STR),
            obj(["type", "id", "name", "input"], type={"const": "tool_use"}, id=STR, name=STR, input=OBJECT),
        ]
    }
    stop_reason = {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]}
    delta = {
        "anyOf": [
            obj(["type", "text"], type={"const": "text_delta"}, text=STR),
            obj(["type", "thinking"], type={"const": "thinking_delta"}, thinking=STR),
            obj(["type", "partial_json"], type={"const": "input_json_delta"}, partial_json=STR),
            obj(["type", "signature"], type={"const": "signature_delta"}, signature=STR),
        ]
    }
    event = {"type": "object", "required": ["type"], "properties": {"type": {"enum": STREAM_EVENTS}}}

    def kind(name: str, required: list[str] | None = None, **properties) -> dict:
        return obj(["type", *(required or [])], type={"const": name}, **properties)

    components.update(
        AnthropicUsage=usage,
        AnthropicMessage=obj(
            ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
            id=STR,
            type={"const": "message"},
            role={"const": "assistant"},
            model=STR,
            content=array(block),
            stop_reason=nullable(stop_reason),
            stop_sequence=nullable(STR),
            usage=ref("AnthropicUsage"),
        ),
        AnthropicStreamEvent={
            "description": "The data of one event of a streamed message",
            "anyOf": [
                kind("message_start", ["message"], message=ref("AnthropicMessage")),
                kind("content_block_start", ["index", "content_block"], index=INT, content_block=block),
                kind("content_block_delta", ["index", "delta"], index=INT, delta=delta),
                kind("content_block_stop", ["index"], index=INT),
                kind(
                    "message_delta",
                    ["delta", "usage"],
                    delta=obj(["stop_reason", "stop_sequence"], stop_reason=stop_reason, stop_sequence=nullable(STR)),
                    usage=ref("AnthropicUsage"),
                ),
                kind("message_stop"),
                kind("ping"),
                ref("AnthropicError"),
            ],
        },
        AnthropicEvent={
            "description": "One Server-Sent Event: `event:` is its data's type; `ping` while the job waits.",
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"enum": STREAM_EVENTS},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"allOf": [event, ref("AnthropicStreamEvent")]},
                },
            },
        },
        AnthropicTokenCount=obj(["input_tokens"], input_tokens=INT),
        AnthropicError=obj(
            ["type", "error"],
            type={"const": "error"},
            error=obj(["type", "message"], type={"enum": sorted({*ERROR_TYPES.values(), "api_error"})}, message=STR),
            request_id=STR,
        ),
    )
    return components


def _request_schemas(settings: Settings) -> dict:
    components: dict = {}
    for model, name in ((MessagesRequest, "AnthropicMessagesRequest"), (MessagesInput, "AnthropicCountTokensRequest")):
        schema = model.model_json_schema(ref_template=REF.format(model=PREFIX + "{model}"))
        for sub_name, sub in schema.pop("$defs", {}).items():
            if components.setdefault(PREFIX + sub_name, sub) != sub:
                raise RuntimeError(f"two different schemas named {sub_name}")
        schema["properties"]["messages"]["maxItems"] = settings.max_messages
        components[name] = schema
    stops = components["AnthropicMessagesRequest"]["properties"]["stop_sequences"]["anyOf"][0]
    stops.update(maxItems=settings.max_stop_sequences)
    stops["items"].update(minLength=1, maxLength=settings.max_stop_length)
    components["AnthropicMessagesRequest"]["properties"]["max_tokens"]["description"] = (
        "capped by what the prompt leaves of the model's context (`model_context_window_exceeded` then)"
    )
    return components
