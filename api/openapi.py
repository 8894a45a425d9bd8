"""`GET /openapi.json`: an OpenAPI 3.1 description of every public endpoint.

Request bodies come from the pydantic models that validate them (api/schemas.py), with the
limits this server applies (its Settings) written in, so the document cannot drift from the
validation. Paths, responses and the shapes of answers are written here by hand, next to
each other, because the views build their answers as plain dicts. Security follows the
configuration: `/v1/*` declares the bearer API key when API_KEYS / API_KEYS_FILE are set, the
admin endpoints the admin token when ADMIN_TOKEN is set. tests/test_openapi.py runs
schemathesis against a live server to hold every answer to this document.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from contract.settings import Settings

from . import (
    openapi_completions,
    openapi_embeddings,
    openapi_jobs,
    openapi_messages,
    openapi_responses,
    openapi_schemas,
)
from .openapi_builders import (
    ERROR_TEXT,
    REQUEST_ID,
    STR,
    OperationScope,
    errors,
    json_response,
    operation,
    param,
    ref,
)

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_json():
    ext = current_app.extensions
    if "mis_openapi" not in ext:  # built once per app: settings do not change while it runs
        ext["mis_openapi"] = build(ext["mis"].settings)
    return jsonify(ext["mis_openapi"])


# ---- the document ---------------------------------------------------------------------------


def build(settings: Settings) -> dict:
    api_security: list[dict[str, list[str]]] = [{"apiKey": []}] if settings.api_keys_configured else [{}]
    admin_security: list[dict[str, list[str]]] = (
        [{"adminToken": []}, {"adminBasic": []}] if settings.admin_token else [{}]
    )
    v1: OperationScope = dict(tag="OpenAI-compatible", security=api_security)
    adm: OperationScope = dict(tag="Admin", security=admin_security)
    model_path = param(
        "model_path",
        "query",
        {"type": "string", "minLength": 1, "maxLength": 256},
        "a directory name under MODELS_DIR or a Hugging Face repo id (org/name)",
        required=True,
    )
    wait = param(
        "wait",
        "query",
        {"type": "number", "minimum": 0, "maximum": 300},
        "seconds to wait for the outcome before answering 202 (default 60)",
    )
    completion = {
        "description": "The completion, or its stream of chunks when `stream` is true",
        "headers": REQUEST_ID,
        "content": {
            "application/json": {"schema": ref("ChatCompletion")},
            "text/event-stream": {"schema": ref("ChatCompletionEvent")},
        },
    }
    paths = {
        "/v1/chat/completions": {
            "post": operation(
                "Create a chat completion",
                {"200": completion, **errors(400, 401, 403, 404, 413, 429, 500, 503, 504)},
                body=ref("ChatCompletionRequest"),
                description=(
                    "OpenAI's chat completions. With `stream: true` the answer is Server-Sent Events; a "
                    "request the model refuses (prompt longer than its context) is a 400 before the "
                    'stream starts, a failure mid-stream is a last `data: {"error": ...}` event.'
                ),
                **v1,
            )
        },
        "/v1/chat/completions/{completion_id}": {
            "get": operation(
                "Read a finished chat completion back",
                {
                    "200": json_response("The completion", ref("ChatCompletion")),
                    **errors(400, 401, 403, 404, 409, 500, 503, 504),
                },
                parameters=[param("completion_id", "path", STR, "`chatcmpl-<id>` from a completion")],
                **v1,
            )
        },
        "/v1/models": {
            "get": operation(
                "List the models live workers serve",
                {"200": json_response("Models", ref("ModelList")), **errors(401, 403, 500, 503)},
                **v1,
            )
        },
        "/v1/models/{model_id}": {
            "get": operation(
                "Describe one served model",
                {"200": json_response("The model", ref("Model")), **errors(401, 403, 404, 500, 503)},
                parameters=[param("model_id", "path", STR, "a model id from /v1/models")],
                **v1,
            )
        },
        "/health": {
            "get": operation(
                "Liveness: Redis and the workers",
                {
                    "200": json_response("Redis answers (`degraded`: no worker serves)", ref("Health")),
                    "503": json_response("Redis is unreachable", ref("Health")),
                },
                tag="Service",
                security=[{}],
            )
        },
        "/openapi.json": {
            "get": operation(
                "This document", {"200": json_response("OpenAPI 3.1", {"type": "object"})}, tag="Service", security=[{}]
            )
        },
        "/admin/health": {
            "get": operation(
                "Workers with their memory, managers with theirs",
                {"200": json_response("Health", ref("AdminHealth")), **errors(401, 403, 500, 503)},
                **adm,
            )
        },
        "/admin/status": {
            "get": operation(
                "Workers, queues, rates and recent errors",
                {"200": json_response("Status", ref("AdminStatus")), **errors(401, 403, 500, 503)},
                **adm,
            )
        },
        "/admin/load": {
            "post": operation(
                "Load a model through a manager",
                {
                    "200": json_response("Loaded and serving", ref("LoadResult")),
                    "202": json_response("Still loading after `wait`; follow the command links", ref("LoadResult")),
                    **errors(400, 401, 403, 500, 503),
                },
                parameters=[
                    model_path,
                    param(
                        "kind", "query", {"enum": ["text", "vision", "embedding"]}, "guessed from the model if absent"
                    ),
                    param("replicas", "query", {"type": "integer", "minimum": 1, "maximum": 16}, "default 1"),
                    param(
                        "keep_alive",
                        "query",
                        {"type": "integer", "minimum": -1, "maximum": 604800},
                        "idle seconds before the workers stop (-1: never)",
                    ),
                    param("kv_bits", "query", {"enum": ["none", "8", "4"]}, "KV cache precision (text models)"),
                    param("kv_group_size", "query", {"enum": ["32", "64", "128"]}, "KV quantization group (text)"),
                    wait,
                ],
                **adm,
            )
        },
        "/admin/unload": {
            "post": operation(
                "Unload a model: its workers finish (or cancel) and exit",
                {
                    "200": json_response("Gone", ref("UnloadResult")),
                    "202": json_response("Still unloading after `wait`", ref("UnloadResult")),
                    **errors(400, 401, 403, 404, 500, 503),
                },
                parameters=[model_path, param("cancel", "query", {"type": "boolean"}, "cancel running jobs"), wait],
                **adm,
            )
        },
        "/admin/commands/{command_id}": {
            "get": operation(
                "A load command's state",
                {"200": json_response("The command", ref("CommandStatus")), **errors(401, 403, 404, 500, 503)},
                parameters=[param("command_id", "path", STR, "from /admin/load's 202")],
                **adm,
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Text exposition format 0.0.4",
                        "headers": REQUEST_ID,
                        "content": {"text/plain": {"schema": STR}},
                    },
                    **errors(401, 403, 500),
                },
                **adm,
            )
        },
    }
    paths.update(openapi_jobs.paths(v1))
    paths.update(openapi_messages.paths(settings))
    paths.update(openapi_responses.paths(v1))
    paths.update(openapi_completions.paths(v1))
    paths.update(openapi_embeddings.paths(v1))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MLX Inference Server",
            "version": "0.1.0",
            "description": (
                "OpenAI-compatible chat completions in front of MLX models. Errors are always "
                '`{"error": {message, type, param, code}}`; every response carries X-Request-Id. '
                "The rq dashboard at /rq (admin) is a browser UI and not described here. "
                "See docs/API.md and docs/SECURITY.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {
                **openapi_schemas.model_schemas(settings),
                **openapi_schemas.answer_schemas(),
                **openapi_jobs.schemas(settings),
                **openapi_messages.schemas(settings),
                **openapi_responses.schemas(),
                **openapi_completions.schemas(settings),
                **openapi_embeddings.schemas(settings),
            },
            "responses": {f"Error{s}": json_response(text, ref("Error")) for s, text in ERROR_TEXT.items()},
            "headers": {
                "RequestId": {
                    "description": "The request's id, also in the server's log lines "
                    "(a chat completion's id for chat requests)",
                    "required": True,
                    "schema": STR,
                }
            },
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A key from API_KEYS / API_KEYS_FILE"},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
                "adminBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "ADMIN_TOKEN as the password, any user name (browsers)",
                },
                **openapi_messages.SECURITY_SCHEMES,
            },
        },
    }
