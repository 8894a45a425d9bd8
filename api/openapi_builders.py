"""Small builders of OpenAPI 3.1 fragments, shared by api/openapi.py (the document and its
chat, models and admin paths) and api/openapi_jobs.py (documents and batches)."""

from __future__ import annotations

from typing import TypedDict

REF = "#/components/schemas/{model}"


def ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def obj(required: list[str] | None = None, **properties) -> dict:
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}


def json_response(description: str, schema: dict) -> dict:
    return {"description": description, "headers": REQUEST_ID, "content": {"application/json": {"schema": schema}}}


ERROR_TEXT = {
    400: "Invalid request: a field is missing, mistyped or out of range (`param` names it), the "
    "body is not JSON, or the prompt does not fit the model's context (`context_length_exceeded`)",
    401: "Missing or invalid credentials",
    403: "Credentials are not enough, or this surface is disabled on this bind",
    404: "No such model, command, completion, document, file or batch",
    409: "The completion or document is not finished yet",
    413: "Request body larger than MAX_BODY_BYTES, or a document or file over its limit",
    415: "The body's media type is not one this endpoint takes",
    429: "The model's queue is full; see Retry-After",
    500: "The server or the worker failed (the log has the details under the request id)",
    503: "Redis unreachable, model loading or unavailable, worker gone",
    504: "Generation ran past JOB_TIMEOUT",
}


def errors(*statuses: int) -> dict:
    return {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses}


class OperationScope(TypedDict):
    """The tag and security a group of operations shares: `operation(..., **scope)`."""

    tag: str
    security: list


def operation(
    summary: str,
    responses: dict,
    *,
    tag: str,
    security: list,
    description: str = "",
    parameters: list | None = None,
    body: dict | None = None,
) -> dict:
    operation = {"summary": summary, "tags": [tag], "security": security, "responses": responses}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def param(name: str, where: str, schema: dict, description: str, required: bool = False) -> dict:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": description,
    }
