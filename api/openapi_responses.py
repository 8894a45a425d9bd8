"""The OpenAPI description of the Responses API (api/responses.py): its operations, the
request as its pydantic model validates it, the response object and its stream's events.
`api.openapi.build` merges these paths and schemas into the one document."""

from __future__ import annotations

from .openapi_builders import (
    BOOL,
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
from .responses_request import ResponsesRequest

STATUSES = ["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
RESPONSE_ID = param("response_id", "path", STR, "`resp_<id>` from a response")


def schemas() -> dict:
    request = ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    components = request.pop("$defs", {})  # named Response*: no clash with the chat request's
    item = {"type": "object", "required": ["type"], "properties": {"type": STR, "id": STR}}
    usage = obj(
        ["input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens"],
        input_tokens=INT,
        input_tokens_details=obj(["cached_tokens"], cached_tokens=INT),
        output_tokens=INT,
        output_tokens_details=obj(["reasoning_tokens"], reasoning_tokens=INT),
        total_tokens=INT,
    )
    response = obj(
        ["id", "object", "created_at", "status", "model", "output", "tools", "tool_choice", "parallel_tool_calls"],
        id=STR,
        object={"const": "response"},
        created_at=NUM,
        status={"enum": STATUSES},
        background=BOOL,
        completed_at=nullable(NUM),
        error=nullable(obj(["code", "message"], code=STR, message=STR)),
        incomplete_details=nullable(obj(["reason"], reason=STR)),
        instructions=nullable(STR),
        max_output_tokens=nullable(INT),
        metadata={"type": "object", "additionalProperties": STR},
        model=STR,
        output=array(item),
        parallel_tool_calls=BOOL,
        previous_response_id=nullable(STR),
        store=BOOL,
        temperature=nullable(NUM),
        top_p=nullable(NUM),
        tools=array({"type": "object"}),
        tool_choice={"anyOf": [STR, {"type": "object"}]},
        usage=nullable(usage),
    )
    return {
        **components,
        "ResponsesRequest": request,
        "Response": response,
        "ResponseEvent": obj(["type", "sequence_number"], type=STR, sequence_number=INT),
        "ResponseDeleted": obj(["id", "object", "deleted"], id=STR, object={"const": "response"}, deleted=BOOL),
        "ResponseInputItems": obj(
            ["object", "data", "first_id", "last_id", "has_more"],
            object={"const": "list"},
            data=array(item),
            first_id=nullable(STR),
            last_id=nullable(STR),
            has_more=BOOL,
        ),
    }


def paths(v1: OperationScope) -> dict:
    answer = {
        "description": "The response (`queued` at once with `background: true`), or its events when `stream` is true",
        "content": {
            "application/json": {"schema": ref("Response")},
            "text/event-stream": {"schema": ref("ResponseEvent")},
        },
    }
    return {
        "/v1/responses": {
            "post": operation(
                "Create a response",
                {"200": answer, **errors(400, 401, 403, 404, 413, 429, 500, 503, 504)},
                body=ref("ResponsesRequest"),
                description=(
                    "OpenAI's Responses API on a chat job. `background: true` answers at once and the job "
                    "runs whether or not anyone listens; `GET /v1/responses/{id}?stream=true&starting_after=N` "
                    "resumes its events. Stored responses (`store`, the default) are kept RESPONSES_TTL."
                ),
                **v1,
            )
        },
        "/v1/responses/{response_id}": {
            "get": operation(
                "Retrieve a stored response, or resume its event stream",
                {"200": answer, **errors(400, 401, 403, 404, 500, 503)},
                parameters=[
                    RESPONSE_ID,
                    param("stream", "query", {"enum": ["true", "false"]}, "true: its events, as SSE"),
                    param("starting_after", "query", INT, "with stream: only events after this sequence number"),
                ],
                **v1,
            ),
            "delete": operation(
                "Delete a stored response (a running one is cancelled)",
                {"200": json_response("Deleted", ref("ResponseDeleted")), **errors(401, 403, 404, 500, 503)},
                parameters=[RESPONSE_ID],
                **v1,
            ),
        },
        "/v1/responses/{response_id}/cancel": {
            "post": operation(
                "Cancel a background response",
                {"200": json_response("The response", ref("Response")), **errors(400, 401, 403, 404, 500, 503)},
                parameters=[RESPONSE_ID],
                **v1,
            )
        },
        "/v1/responses/{response_id}/input_items": {
            "get": operation(
                "The input items of a stored response",
                {"200": json_response("Items", ref("ResponseInputItems")), **errors(400, 401, 403, 404, 500, 503)},
                parameters=[
                    RESPONSE_ID,
                    param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "items per page"),
                    param("order", "query", {"enum": ["asc", "desc"]}, "desc (default): newest first"),
                    param("after", "query", STR, "an item id: the page after it"),
                ],
                **v1,
            )
        },
    }
