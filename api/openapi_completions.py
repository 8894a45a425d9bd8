"""The OpenAPI description of legacy completions (api/legacy.py) and of cancelling a chat
completion by id (api/chat.py). `api.openapi.build` merges these paths and schemas."""

from __future__ import annotations

from contract.settings import Settings

from .legacy_request import CompletionRequest
from .openapi_builders import (
    INT,
    NUM,
    STR,
    OperationScope,
    array,
    errors,
    json_response,
    nullable,
    obj,
    operation,
    param,
    ref,
)


def schemas(settings: Settings) -> dict:
    request = CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request.pop("$defs", None)  # StreamOptions: the chat request's, already a component
    request["properties"]["n"]["maximum"] = settings.max_n
    logprobs = nullable(
        obj(
            ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
            tokens=array(STR),
            token_logprobs=array(NUM),
            top_logprobs=array({"type": "object", "additionalProperties": NUM}),
            text_offset=array(INT),
        )
    )
    choice = obj(
        ["index", "text", "logprobs", "finish_reason"],
        index=INT,
        text=STR,
        logprobs=logprobs,
        finish_reason=nullable({"enum": ["stop", "length"]}),
    )
    head = dict(
        id=STR, object={"const": "text_completion"}, created=INT, model=STR, system_fingerprint={"type": "null"}
    )
    return {
        "CompletionRequest": request,
        "TextCompletion": obj(
            ["id", "object", "created", "model", "choices", "usage"], **head, choices=array(choice), usage=ref("Usage")
        ),  # fmt: skip
        "TextCompletionChunk": obj(
            ["id", "object", "created", "model", "choices"], **head, choices=array(choice), usage=nullable(ref("Usage"))
        ),  # fmt: skip
        "ChatCompletionCancel": obj(
            ["id", "object", "status"],
            id=STR,
            object={"const": "chat.completion.cancel"},
            status={"enum": ["cancelled", "finished"]},
        ),
    }


def paths(v1: OperationScope) -> dict:
    return {
        "/v1/completions": {
            "post": operation(
                "Create a legacy completion (a raw prompt, no chat template)",
                {
                    "200": {
                        "description": "The completion, or its stream of chunks when `stream` is true",
                        "content": {
                            "application/json": {"schema": ref("TextCompletion")},
                            "text/event-stream": {"schema": ref("TextCompletionChunk")},
                        },
                    },
                    **errors(400, 401, 403, 404, 413, 429, 500, 503, 504),
                },
                body=ref("CompletionRequest"),
                **v1,
            )
        },
        "/v1/chat/completions/{completion_id}/cancel": {
            "post": operation(
                "Cancel a queued or running chat completion by its id (extension)",
                {
                    "200": json_response("Cancelled, or already finished", ref("ChatCompletionCancel")),
                    **errors(401, 403, 404, 500, 503),
                },
                parameters=[param("completion_id", "path", STR, "`chatcmpl-<id>` of a completion")],
                **v1,
            )
        },
    }
